"""Client library of the replicated KV store (see clerk.client)."""

from clerk.client import (
    AsyncClerk,
    BadRequest,
    Clerk,
    ClerkError,
    ClerkTimeout,
    Data,
    Member,
    NoSpace,
    RequestRefused,
    ScanResult,
    ServerError,
    TooLarge,
    prefix_end,
)

__all__ = [
    "AsyncClerk",
    "BadRequest",
    "Clerk",
    "ClerkError",
    "ClerkTimeout",
    "Data",
    "Member",
    "NoSpace",
    "RequestRefused",
    "ScanResult",
    "ServerError",
    "TooLarge",
    "prefix_end",
]
