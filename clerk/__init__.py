"""Client library of the replicated KV store (see clerk.client)."""

from clerk.client import (
    AsyncClerk,
    BadRequest,
    Clerk,
    ClerkError,
    ClerkTimeout,
    RequestRefused,
    ServerError,
    TooLarge,
)

__all__ = [
    "AsyncClerk",
    "BadRequest",
    "Clerk",
    "ClerkError",
    "ClerkTimeout",
    "RequestRefused",
    "ServerError",
    "TooLarge",
]
