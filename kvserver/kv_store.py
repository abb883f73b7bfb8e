"""The KV state machine's storage engine: the interface its two stores share.

``KvStore`` holds three kinds of records: the data (``bytes`` key ->
``bytes`` value, ordered by key as unsigned bytes), the client sessions
(``client_id`` -> encoded session) and a few named meta values (the applied
index, ...). Every write goes through one ``write()`` batch, one atomic
transaction, so the applied index, the sessions and the data it covers always
change together. ``LmdbKvStore`` (``kvserver.lmdb_store``) keeps them in an
LMDB file; ``MemoryKvStore`` (``kvserver.memory_store``) in dicts, for the
simulator and unit tests. Both pass one contract suite
(tests/kvserver/test_kv_store.py).

Threads: reads and write batches run on the event loop thread, one batch at a
time. ``sync`` and ``copy_to`` may run in one worker thread meanwhile (they
take their own read snapshot and never block the loop's writes for long);
``replace_with`` and ``close`` run on the loop and wait for a ``sync`` or
``copy_to`` in progress to finish.

Keys: any bytes, ``b""`` and bytes ``\\x00``/``\\xff`` included, at most
``MAX_KEY_BYTES`` (511, LMDB's compiled-in limit; ``kvserver.limits`` caps
client keys there). Longer keys are refused by ``put`` (``ValueError``) and
are simply absent for reads. Values: any bytes (``b""`` too).

The LMDB store's files, flags and crash semantics: ``kvserver.lmdb_store``;
the in-memory store's copy file: ``kvserver.memory_store``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Protocol

__all__ = [
    "MAX_KEY_BYTES",
    "KvStore",
    "KvStoreError",
    "StoreDamagedError",
    "StoreFormatError",
    "WriteBatch",
]

#: Longest key either store holds (LMDB's compiled-in maximum, ``env.max_key_size()``).
MAX_KEY_BYTES = 511


class KvStoreError(Exception):
    """A store operation that cannot be done (closed store, a second batch)."""


class StoreDamagedError(KvStoreError):
    """At open: the store file may be corrupt (unsynced commits cut by an OS
    crash or power loss, or not an LMDB file at all); restore a snapshot."""


class StoreFormatError(KvStoreError):
    """A file handed to ``replace_with`` is not a copy this store can read."""


class WriteBatch(Protocol):
    """One write transaction: a context manager from ``KvStore.write()``.

    Committed (not fsynced) when the ``with`` block exits normally, rolled
    back entirely when it raises. Its methods are only valid inside the block.
    """

    def __enter__(self) -> WriteBatch: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` including this batch's own writes, or None."""
        ...

    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` (at most ``MAX_KEY_BYTES``, else ``ValueError``)."""
        ...

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; True when it existed."""
        ...

    def put_session(self, client_id: int, data: bytes) -> None:
        """Set the encoded session of ``client_id`` (0 <= id < 2**64)."""
        ...

    def delete_session(self, client_id: int) -> None:
        """Remove the session of ``client_id`` (no error if absent)."""
        ...

    def set_meta(self, name: str, value: bytes) -> None:
        """Set the meta value ``name`` (non-empty, no NUL, <= 511 bytes UTF-8)."""
        ...


class KvStore(Protocol):
    """The state machine's storage (module docstring: threads; ``kvserver.lmdb_store``:
    crash semantics)."""

    # -- reads: on the loop, O(log n) per key, O(page) per scan --

    def get(self, key: bytes) -> bytes | None:
        """The committed value of ``key``, or None."""
        ...

    def scan(self, start: bytes, end: bytes | None, limit: int, max_bytes: int,
             *, overhead: int = 0) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """The pairs with ``start <= key < end`` (``end`` None: no bound) in key
        order: at most ``limit`` (>= 1, else ``ValueError``), stopping before
        the sum of ``len(key) + len(value) + overhead`` would pass
        ``max_bytes``, but at least one pair when the range has one. Also the
        first key of the range not returned (where the next page starts), or
        None when the pairs end the range."""
        ...

    def key_count(self) -> int:
        """Number of data keys."""
        ...

    def get_meta(self, name: str) -> bytes | None:
        """The meta value ``name``, or None."""
        ...

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        """Every ``(client_id, encoded session)``, ids ascending (read at open)."""
        ...

    # -- writes --

    def write(self) -> WriteBatch:
        """A new write batch (one at a time, else ``KvStoreError``)."""
        ...

    def size_bytes(self) -> int:
        """Bytes the store uses now (LMDB: pages in use times the page size)."""
        ...

    # -- durability and snapshots (sync and copy_to may run in a worker thread) --

    def sync(self) -> None:
        """Make every committed write durable. Raises ``OSError``."""
        ...

    def copy_to(self, path: str) -> int:
        """Write a consistent copy of the whole store (data, sessions, meta) as
        of one moment to the new file ``path``, durably; its size in bytes.
        Raises ``OSError``."""
        ...

    def replace_with(self, path: str) -> None:
        """Become the store in ``path`` (a ``copy_to`` file, maybe another
        node's), atomically and durably, consuming the file. A crash leaves
        the old store or the new one. ``StoreFormatError`` (nothing changed)
        if the file is not a copy; ``OSError``."""
        ...

    def close(self) -> None:
        """Sync (unless fsync is off) and release the store; idempotent."""
        ...


# Argument checks and key encodings both stores share.

def check_key(key: bytes) -> None:
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(f"key of {len(key)} bytes is over the store's limit of "
                         f"{MAX_KEY_BYTES} bytes")


def session_key(client_id: int) -> bytes:
    if not 0 <= client_id < 1 << 64:
        raise ValueError(f"client id {client_id} is not an unsigned 64-bit integer")
    return client_id.to_bytes(8, "big")


def meta_key(name: str) -> bytes:
    raw = name.encode()
    if not raw or b"\x00" in raw or len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"bad meta name {name!r}: must be 1..{MAX_KEY_BYTES} bytes, no NUL")
    return raw


def check_scan(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"scan limit must be >= 1, not {limit}")


def fill_page(pairs: list[tuple[bytes, bytes]], size: int,
              items: Iterable[tuple[bytes, bytes]], end: bytes | None, limit: int,
              max_bytes: int, overhead: int) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """The rule of ``KvStore.scan`` over ``items`` (pairs in key order from
    the scan's start), appended to ``pairs`` (``size`` bytes so far): the
    page and the first key not in it, or None when the range is done."""
    for key, value in items:
        if end is not None and key >= end:
            return pairs, None
        if len(pairs) >= limit:
            return pairs, key
        size += len(key) + len(value) + overhead
        if size > max_bytes and pairs:
            return pairs, key
        pairs.append((key, value))
    return pairs, None
