"""Exceptions and status codes of the RPC framework.

Two families, kept apart on purpose (as in h11):

* `ProtocolError` means the byte stream itself is broken. `LocalProtocolError`
  is our fault (we were asked to send something the protocol cannot carry,
  e.g. a frame above the size limit); `RemoteProtocolError` is the peer's
  fault (garbage, an oversized length prefix, an undecodable header). The
  connection cannot be trusted afterwards and is closed.
* `RpcError` is what a caller sees when one call fails: it carries a `Status`
  and a message; the connection may well be fine.
"""

from __future__ import annotations

import enum

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "RpcError",
    "Status",
]


class Status(enum.IntEnum):
    """Outcome of a call; the numbers are those of `rpc.Status` in rpc.proto."""

    OK = 0
    UNKNOWN_SERVICE = 1
    UNKNOWN_METHOD = 2
    BAD_REQUEST = 3
    HANDLER_ERROR = 4
    DEADLINE_EXCEEDED = 5
    UNAVAILABLE = 6


class RpcError(Exception):
    """A call failed with `status` (never `Status.OK`) and a human message.

    Handlers may raise it too: the provider then answers with that status and
    message instead of HANDLER_ERROR.
    """

    def __init__(self, status: Status | int, message: str = "") -> None:
        self.status = Status(status)
        self.message = message
        super().__init__(status, message)

    def __str__(self) -> str:
        if self.message:
            return f"{self.status.name}: {self.message}"
        return self.status.name

    def __repr__(self) -> str:
        return f"RpcError({self.status.name}, {self.message!r})"


class ProtocolError(Exception):
    """The frame stream violates the wire format; the connection is unusable."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the wire format cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not a valid frame."""
