"""Client library of the replicated KV store (see clerk.client)."""

from clerk.client import AsyncClerk, Clerk, ClerkError, ClerkTimeout

__all__ = ["AsyncClerk", "Clerk", "ClerkError", "ClerkTimeout"]
