"""Storage interfaces of the Raft core, and the in-memory implementation.

Two roles, as in etcd-io/raft's ``storage.go``:

* ``LogStorage`` is what ``RaftCore`` *reads*: the stable (already persisted)
  part of the log, the hard state and the latest snapshot. The core never
  writes to it.
* ``Storage`` adds what the driver *writes* after each ``Ready``: ``save``
  writes hard state, entries and an incoming snapshot, ``sync`` makes every
  write so far durable (the driver, ``raft.ready_processor``, writes all the
  Readys it has taken and syncs once when ``Ready.must_sync`` asks: group
  commit), ``create_snapshot`` records an application snapshot, ``compact``
  drops the log before it.

``MemoryStorage`` is the in-memory twin of the file storage (``raft/wal.py``)
and serves the simulator, where "crash" means forgetting everything the core
held that was not yet handed to ``save``.

Layout: ``_entries[0]`` is a dummy entry at the snapshot index holding the
snapshot term, so ``term(first_index - 1)`` is always answerable (the
AppendEntries consistency check needs the term just before the first entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raft.membership import Membership
from raft.types import ENTRY_OVERHEAD, Entry, HardState, Snapshot, SnapshotMeta

__all__ = [
    "CompactedError",
    "LogStorage",
    "MemoryStorage",
    "SnapshotOutOfDateError",
    "Storage",
    "StorageError",
    "StoredLog",
    "UnavailableError",
    "limit_size",
]


class StorageError(Exception):
    """Base of the expected storage failures."""


class CompactedError(StorageError):
    """The requested index is before the first available one (compacted into
    a snapshot). The leader answers by sending the snapshot instead."""


class UnavailableError(StorageError):
    """The requested index is after the last one stored."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one already held was offered."""


class LogStorage(Protocol):
    """The read side the core uses. Indexes are 1-based; see module doc."""

    def initial_state(self) -> tuple[HardState, Membership]:
        """The persisted hard state and the membership recorded in the latest
        snapshot (empty when there is no snapshot)."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``. With ``max_bytes``, stop once the total
        ``Entry.size()`` would pass it, but always return at least one entry.
        Raises ``CompactedError`` if ``lo < first_index()`` and
        ``UnavailableError`` if ``hi > last_index() + 1``."""
        ...

    def term(self, index: int) -> int:
        """Term of entry ``index``, for ``first_index()-1 <= index <= last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


class Storage(LogStorage, Protocol):
    """Read and write side: what the driver (or simulator) owns."""

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> bool:
        """Make one ``Ready`` durable. Order: install ``snapshot`` (dropping
        the log it covers), then append ``entries`` (first truncating any
        stored suffix from ``entries[0].index`` on: those entries conflict
        with the leader's), then record ``hard_state``. When this returns,
        all of it survives a crash (a change of ``hard_state.commit`` alone
        may not: the commit index can be relearned from the leader).

        With ``sync=False`` (what ``ReadyProcessor`` does) the data is
        written and visible to reads but may not be durable until
        ``sync()``; whether a sync is due before anything that depends on
        the write may leave is the core's call (``Ready.must_sync``), which
        lets a driver fsync off its event loop. The result says whether
        this implementation has anything unsynced."""
        ...

    def sync(self) -> None:
        """Make everything saved so far durable (see ``save``)."""
        ...

    def create_snapshot(self, index: int, data: bytes, membership: Membership) -> Snapshot:
        """Record the application's snapshot of the state at ``index`` (which
        must be applied, hence committed and stored). Does not compact."""
        ...

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index``; its term stays as
        the boundary, so ``first_index()`` becomes ``index + 1``. ``index``
        must not pass the snapshot index (only snapshotted state is dropped)."""
        ...

    def close(self) -> None: ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within ``max_bytes`` (at least one entry)."""
    if max_bytes is None or not entries:
        return entries
    # Entry.size() inlined: this loop runs once per entry sent.
    total = 0
    for i, e in enumerate(entries):
        total += len(e.data) + ENTRY_OVERHEAD
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


class StoredLog:
    """The read side over an in-memory copy of the stored log, shared by
    ``MemoryStorage`` and ``FileStorage`` (which keeps all entries in memory
    too, so reads never touch the disk). Subclasses keep ``_entries[0]`` as
    the dummy entry at the snapshot boundary (see module doc)."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(index=0, term=0)]

    def initial_state(self) -> tuple[HardState, Membership]:
        return self._hard_state, self._snapshot.meta.membership

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    # The core asks for these bounds many times per operation, so they read
    # ``_entries`` directly instead of going through ``_offset()``.

    def _offset(self) -> int:
        return self._entries[0].index

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        entries = self._entries
        return entries[0].index + len(entries) - 1

    def term(self, index: int) -> int:
        entries = self._entries
        i = index - entries[0].index
        if i < 0:
            raise CompactedError(f"index {index} compacted (first is {self.first_index()})")
        if i >= len(entries):
            raise UnavailableError(f"index {index} beyond last {self.last_index()}")
        return entries[i].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        entries = self._entries
        offset = entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} compacted (first is {offset + 1})")
        if hi - offset > len(entries):
            raise UnavailableError(f"index {hi - 1} beyond last {self.last_index()}")
        return limit_size(entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot


class MemoryStorage(StoredLog):
    """In-memory ``Storage``. "Durable" means "handed to ``save``"."""

    # -- write side --------------------------------------------------------

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> bool:
        if snapshot is not None and not snapshot.empty:
            self._apply_snapshot(snapshot)
        if entries:
            self._append(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        return False  # memory is as durable as it gets

    def sync(self) -> None:
        pass

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.meta.index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {snapshot.meta.index} is not newer than {self._snapshot.meta.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(index=snapshot.meta.index, term=snapshot.meta.term)]

    def _append(self, entries: Sequence[Entry]) -> None:
        first = self.first_index()
        # Entries already covered by the snapshot are committed and must agree
        # with it (Log Matching); skip them.
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        start = entries[0].index - self._offset()
        if start > len(self._entries):
            raise UnavailableError(
                f"append at {entries[0].index} leaves a gap after {self.last_index()}"
            )
        del self._entries[start:]
        self._entries.extend(entries)

    def create_snapshot(self, index: int, data: bytes, membership: Membership) -> Snapshot:
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self._snapshot.meta.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} beyond last {self.last_index()}")
        meta = SnapshotMeta(index=index, term=self.term(index), membership=membership)
        self._snapshot = Snapshot(meta=meta, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        offset = self._offset()
        if index <= offset:
            raise CompactedError(f"index {index} already compacted (first is {offset + 1})")
        if index > self._snapshot.meta.index:
            raise UnavailableError(
                f"cannot compact to {index} past the snapshot at {self._snapshot.meta.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"cannot compact to {index} beyond last {self.last_index()}")
        keep = self._entries[index - offset :]
        self._entries = [Entry(index=keep[0].index, term=keep[0].term), *keep[1:]]

    def close(self) -> None:
        pass
