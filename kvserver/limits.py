"""The sizes a request may have, derived from one place and checked at the edge.

Every size the store accepts is checked when a request arrives at the
leader, before anything is proposed, so that:

* any entry the leader accepts fits in an AppendEntries frame (the RPC
  frame limit, ``rpc.DEFAULT_MAX_FRAME_SIZE``, bounds every frame; a Raft
  message carries at most ``max_size_per_msg`` of entries, or one entry);
* any value the store holds fits in a Get reply: ``max_value_bytes`` bounds
  the value a PUT sets *and* the value an APPEND leaves. The leader refuses
  an APPEND that would pass it on arrival, and the state machine refuses it
  again when it applies (another APPEND to the same key may have been
  committed in between); the limit it applies is the one the leader stamped
  into the command, so every replica decides the same way even if their
  ``--max-value-bytes`` differ.

A request over a limit is answered ``TOO_LARGE`` (kv.proto) with a text
naming the limit; the clerk raises ``clerk.TooLarge``. It is never retried:
the same request can never succeed.

Defaults, and why:

* ``max_key_bytes`` 511: LMDB's compiled-in maximum key size, so an on-disk
  state machine on LMDB can hold every key this store accepts
  (memcached allows 250, etcd bounds keys only by the request size).
* ``max_value_bytes`` 1 MiB and ``max_request_bytes`` 2 MiB: etcd's
  ``--max-request-bytes`` is 1.5 MiB. A Raft entry is replicated to every
  follower and kept in the log until a snapshot; multi-megabyte entries
  slow every other client's writes behind them.
* ``max_batch_ops`` 1024: one ``Batch`` call proposes one entry per write on
  the event loop; the clerk sends at most 64.
* A ``Scan`` page: at most ``max_scan_keys`` (10,000) pairs, ``DEFAULT_SCAN_LIMIT``
  (1,000) when the request names no limit, and at most ``max_scan_bytes``
  of keys and values (default ``max_request_bytes``, so at least one
  largest pair) plus ``SCAN_PAIR_OVERHEAD`` per pair: every page fits in a
  frame with ``FRAME_OVERHEAD`` to spare, and a page always holds at least
  one pair. The count bound keeps one page from holding the event loop
  for long (tiny pairs are cheap in bytes, not in time).

All can be raised (``kvserver --max-key-bytes ...``) up to what the frame
limit allows: ``validate`` refuses a combination that cannot fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpc.codec import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "FRAME_OVERHEAD",
    "SCAN_PAIR_OVERHEAD",
    "Limits",
    "LimitsError",
]

#: Bytes a frame needs beyond one request's key and value: the RPC header,
#: the Raft message envelope, the entry's index and term, and the command's
#: other fields. Generous (the real figure is under 200 bytes).
FRAME_OVERHEAD = 64 * 1024


DEFAULT_MAX_REQUEST_BYTES = 2 << 20

#: Pairs in a ``Scan`` page when the request asks for none (limit 0).
DEFAULT_SCAN_LIMIT = 1000

#: Bytes one pair of a ``ScanReply`` costs beyond its key and value: the
#: tags and lengths of a ``KeyValue`` inside a repeated field (at most 1 +
#: 3 for the entry, 1 + 2 for the key, 1 + 4 for the value; rounded up).
SCAN_PAIR_OVERHEAD = 16


class LimitsError(ValueError):
    """A combination of limits that could not be honoured."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes in bytes (keys and values are bytes; a clerk encodes text as UTF-8)."""

    max_key_bytes: int = 511
    max_value_bytes: int = 1 << 20
    #: A whole request: one PutAppend, or every operation of a Batch. 0:
    #: the larger of 2 MiB and what the largest single put needs.
    max_request_bytes: int = 0
    max_batch_ops: int = 1024
    #: The RPC frame limit the node's port runs with.
    max_frame_bytes: int = DEFAULT_MAX_FRAME_SIZE
    #: Keys and values in one ``Scan`` page, plus ``SCAN_PAIR_OVERHEAD`` a
    #: pair. 0: ``max_request_bytes``.
    max_scan_bytes: int = 0
    #: Most pairs in one ``Scan`` page (a larger limit asked is cut to this).
    max_scan_keys: int = 10_000

    def __post_init__(self) -> None:
        if self.max_request_bytes == 0:
            derived = max(DEFAULT_MAX_REQUEST_BYTES, self.max_key_bytes + self.max_value_bytes)
            object.__setattr__(self, "max_request_bytes", derived)
        if self.max_scan_bytes == 0:
            object.__setattr__(self, "max_scan_bytes", self.max_request_bytes)

    def validate(self) -> Limits:
        """Self, or ``LimitsError`` naming the limit that does not fit."""
        for name in ("max_key_bytes", "max_value_bytes", "max_request_bytes",
                     "max_batch_ops", "max_frame_bytes", "max_scan_bytes", "max_scan_keys"):
            if getattr(self, name) < 1:
                raise LimitsError(f"{name} must be at least 1")
        one_op = self.max_key_bytes + self.max_value_bytes
        if self.max_request_bytes < one_op:
            raise LimitsError(
                f"max_request_bytes={self.max_request_bytes} is below max_key_bytes + "
                f"max_value_bytes = {one_op}: the largest put could never be sent")
        if self.max_request_bytes + FRAME_OVERHEAD > self.max_frame_bytes:
            raise LimitsError(
                f"max_request_bytes={self.max_request_bytes} does not fit in an RPC frame of "
                f"{self.max_frame_bytes} bytes (at most "
                f"{self.max_frame_bytes - FRAME_OVERHEAD})")
        if self.max_scan_bytes < one_op:
            raise LimitsError(
                f"max_scan_bytes={self.max_scan_bytes} is below max_key_bytes + "
                f"max_value_bytes = {one_op}: the largest pair could never be scanned")
        if self.max_scan_bytes + FRAME_OVERHEAD > self.max_frame_bytes:
            raise LimitsError(
                f"max_scan_bytes={self.max_scan_bytes} does not fit in an RPC frame of "
                f"{self.max_frame_bytes} bytes (at most "
                f"{self.max_frame_bytes - FRAME_OVERHEAD})")
        return self

    def key_error(self, key: bytes, what: str = "key") -> str | None:
        """Why ``key`` is refused, or None (``what`` names it in the text)."""
        return _over(what, len(key), "max_key_bytes", self.max_key_bytes)

    def value_error(self, value: bytes, what: str = "value") -> str | None:
        """Why a PUT, APPEND or CAS of ``value`` is refused, or None."""
        return _over(what, len(value), "max_value_bytes", self.max_value_bytes)

    def appended_error(self, size: int) -> str | None:
        """Why an APPEND that would leave a value of ``size`` bytes is refused."""
        return _over("the value this APPEND would leave", size, "max_value_bytes",
                     self.max_value_bytes)

    def request_error(self, size: int) -> str | None:
        """Why a request of ``size`` encoded bytes is refused, or None."""
        return _over("request", size, "max_request_bytes", self.max_request_bytes)

    def scan_page(self, limit: int) -> tuple[int, int]:
        """(most pairs, most bytes) of a ``Scan`` page a request asked
        ``limit`` pairs of (0: ``DEFAULT_SCAN_LIMIT``); the bytes count each
        pair's key and value plus ``SCAN_PAIR_OVERHEAD``."""
        return min(limit or DEFAULT_SCAN_LIMIT, self.max_scan_keys), self.max_scan_bytes


def _over(what: str, size: int, name: str, limit: int) -> str | None:
    if size <= limit:
        return None
    return f"{what} is {size} bytes, over the limit {name}={limit}"
