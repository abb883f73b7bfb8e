"""The ``Storage`` contract, run against every implementation.

``file-reopen`` closes and reopens the ``FileStorage`` after every write
call (successful or rejected), so each assertion also checks that exactly
the state the call left in memory was made durable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from raft.file_storage import FileStorage
from raft.membership import Membership
from raft.storage import (
    CompactedError,
    MemoryStorage,
    SnapshotOutOfDateError,
    Storage,
    UnavailableError,
    limit_size,
)
from raft.types import NONE, Entry, EntryType, HardState, Snapshot, SnapshotMeta


class ReopeningFileStorage:
    """A ``FileStorage`` that restarts after every write call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.s = FileStorage(path, segment_bytes=256)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s, name)

    def _reopen(self) -> None:
        self.s.close()
        self.s = FileStorage(self.path, segment_bytes=256)

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        try:
            self.s.save(hard_state, entries, snapshot)
        finally:
            self._reopen()

    def create_snapshot(self, index: int, data: bytes, membership: Membership) -> Snapshot:
        try:
            return self.s.create_snapshot(index, data, membership)
        finally:
            self._reopen()

    def compact(self, index: int) -> None:
        try:
            self.s.compact(index)
        finally:
            self._reopen()

    def close(self) -> None:
        self.s.close()


@pytest.fixture(params=["memory", "file", "file-reopen"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    s: Any
    if request.param == "memory":
        s = MemoryStorage()
    elif request.param == "file":
        s = FileStorage(tmp_path / "data", segment_bytes=256)
    else:
        s = ReopeningFileStorage(tmp_path / "data")
    yield s
    s.close()


def ents(lo: int, hi: int, term: int = 1, size: int = 0) -> list[Entry]:
    return [Entry(index=i, term=term, data=bytes([i % 256]) * size) for i in range(lo, hi + 1)]


def log_of(s: Storage) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in s.entries(s.first_index(), s.last_index() + 1)]


def snap(index: int, term: int, peers: frozenset[int] = frozenset({1, 2, 3})) -> Snapshot:
    meta = SnapshotMeta(index=index, term=term, membership=Membership.of(peers))
    return Snapshot(meta=meta, data=b"sm%d" % index)


# -- empty storage ------------------------------------------------------------


def test_empty_storage(storage: Storage) -> None:
    assert storage.first_index() == 1
    assert storage.last_index() == 0
    assert storage.term(0) == 0
    assert storage.entries(1, 1) == []
    assert storage.snapshot() == Snapshot()
    assert storage.initial_state() == (HardState(), Membership())
    with pytest.raises(UnavailableError):
        storage.term(1)
    with pytest.raises(UnavailableError):
        storage.entries(1, 2)
    with pytest.raises(CompactedError):
        storage.entries(0, 1)


# -- entries, term ------------------------------------------------------------


def test_append_and_read(storage: Storage) -> None:
    storage.save(None, ents(1, 5, term=1))
    storage.save(None, ents(6, 7, term=2))
    assert log_of(storage) == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]
    assert storage.entries(3, 5) == ents(3, 4)
    assert storage.entries(8, 8) == []
    assert storage.term(7) == 2
    e = storage.entries(1, 2)[0]
    assert e.type is EntryType.NORMAL


def test_entry_fields_round_trip(storage: Storage) -> None:
    batch = [
        Entry(index=1, term=3, data=b"", type=EntryType.NOOP),
        Entry(index=2, term=3, data=b"\x00\xff" * 100),
        Entry(index=3, term=4, data=bytes(range(256))),
    ]
    storage.save(None, batch)
    assert storage.entries(1, 4) == batch


def test_term_bounds(storage: Storage) -> None:
    storage.save(None, ents(1, 5))
    storage.create_snapshot(3, b"s", Membership.of({1}))
    storage.compact(3)
    assert storage.term(3) == 1  # the boundary term stays answerable
    with pytest.raises(CompactedError):
        storage.term(2)
    with pytest.raises(UnavailableError):
        storage.term(6)


def test_entries_bounds(storage: Storage) -> None:
    storage.save(None, ents(1, 5))
    storage.create_snapshot(2, b"s", Membership.of({1}))
    storage.compact(2)
    with pytest.raises(CompactedError):
        storage.entries(2, 4)
    with pytest.raises(UnavailableError):
        storage.entries(3, 7)
    assert storage.entries(3, 6) == ents(3, 5)


def test_entries_max_bytes(storage: Storage) -> None:
    batch = ents(1, 5, size=10)  # each Entry.size() == 34
    storage.save(None, batch)
    assert storage.entries(1, 6, max_bytes=0) == batch[:1]  # always at least one
    assert storage.entries(1, 6, max_bytes=34) == batch[:1]
    assert storage.entries(1, 6, max_bytes=68) == batch[:2]
    assert storage.entries(1, 6, max_bytes=100) == batch[:2]
    assert storage.entries(1, 6, max_bytes=10_000) == batch
    assert storage.entries(1, 6, max_bytes=None) == batch
    assert storage.entries(2, 6, max_bytes=68) == limit_size(batch[1:], 68)


# -- hard state -----------------------------------------------------------------


def test_hard_state(storage: Storage) -> None:
    hs = HardState(term=3, vote=2, commit=0)
    storage.save(hs, [])
    assert storage.initial_state()[0] == hs
    storage.save(None, ents(1, 2, term=3))  # None keeps it
    assert storage.initial_state()[0] == hs
    hs2 = HardState(term=4, vote=NONE, commit=2)
    storage.save(hs2, ents(3, 3, term=4))
    assert storage.initial_state()[0] == hs2
    assert log_of(storage)[-1] == (3, 4)


# -- conflicting suffix ---------------------------------------------------------


def test_conflicting_suffix_is_replaced(storage: Storage) -> None:
    storage.save(None, ents(1, 5, term=1))
    storage.save(None, ents(3, 4, term=2))
    assert log_of(storage) == [(1, 1), (2, 1), (3, 2), (4, 2)]
    storage.save(None, ents(1, 1, term=3))
    assert log_of(storage) == [(1, 3)]
    storage.save(None, ents(2, 3, term=3))
    assert log_of(storage) == [(1, 3), (2, 3), (3, 3)]


def test_append_with_gap_is_rejected(storage: Storage) -> None:
    storage.save(None, ents(1, 3))
    with pytest.raises(UnavailableError):
        storage.save(HardState(term=9), ents(5, 6))
    assert log_of(storage) == [(1, 1), (2, 1), (3, 1)]


def test_entries_covered_by_snapshot_are_skipped(storage: Storage) -> None:
    storage.save(None, ents(1, 5))
    storage.create_snapshot(4, b"s", Membership.of({1}))
    storage.compact(4)
    storage.save(None, ents(2, 3))  # wholly before first: ignored
    assert log_of(storage) == [(5, 1)]
    storage.save(None, ents(3, 7, term=1))  # partly before: the rest appended
    assert log_of(storage) == [(5, 1), (6, 1), (7, 1)]
    storage.save(None, ents(4, 6, term=2))  # overlaps first: rewrites from 5
    assert log_of(storage) == [(5, 2), (6, 2)]


# -- create_snapshot ------------------------------------------------------------


def test_create_snapshot(storage: Storage) -> None:
    storage.save(None, ents(1, 3, term=1) + ents(4, 5, term=2))
    s = storage.create_snapshot(4, b"state@4", Membership.of({1, 2}))
    assert s.meta == SnapshotMeta(index=4, term=2, membership=Membership.of({1, 2}))
    assert s.data == b"state@4"
    assert storage.snapshot() == s
    assert storage.initial_state()[1] == Membership.of({1, 2})
    # Does not compact.
    assert storage.first_index() == 1
    assert storage.last_index() == 5


def test_create_snapshot_errors(storage: Storage) -> None:
    storage.save(None, ents(1, 5))
    with pytest.raises(UnavailableError):
        storage.create_snapshot(6, b"", Membership())
    storage.create_snapshot(3, b"s", Membership.of({1}))
    with pytest.raises(SnapshotOutOfDateError):
        storage.create_snapshot(3, b"again", Membership.of({1}))
    with pytest.raises(SnapshotOutOfDateError):
        storage.create_snapshot(2, b"older", Membership.of({1}))
    assert storage.snapshot().data == b"s"
    s2 = storage.create_snapshot(5, b"s5", Membership.of({1}))
    assert storage.snapshot() == s2


# -- compact --------------------------------------------------------------------


def test_compact(storage: Storage) -> None:
    storage.save(None, ents(1, 3, term=1) + ents(4, 6, term=2))
    storage.create_snapshot(5, b"s", Membership.of({1}))
    storage.compact(4)
    assert storage.first_index() == 5
    assert storage.last_index() == 6
    assert storage.term(4) == 2
    assert log_of(storage) == [(5, 2), (6, 2)]
    storage.compact(5)
    assert storage.first_index() == 6
    assert log_of(storage) == [(6, 2)]
    assert storage.snapshot().meta.index == 5


def test_compact_errors(storage: Storage) -> None:
    storage.save(None, ents(1, 6))
    with pytest.raises(UnavailableError):
        storage.compact(2)  # no snapshot yet
    storage.create_snapshot(4, b"s", Membership.of({1}))
    with pytest.raises(UnavailableError):
        storage.compact(5)  # past the snapshot
    storage.compact(3)
    with pytest.raises(CompactedError):
        storage.compact(3)
    with pytest.raises(CompactedError):
        storage.compact(2)
    assert storage.first_index() == 4


def test_compact_then_append_and_truncate(storage: Storage) -> None:
    storage.save(None, ents(1, 10))
    storage.create_snapshot(8, b"s", Membership.of({1}))
    storage.compact(8)
    storage.save(None, ents(10, 12, term=2))
    assert log_of(storage) == [(9, 1), (10, 2), (11, 2), (12, 2)]
    storage.save(None, ents(9, 9, term=3))
    assert log_of(storage) == [(9, 3)]


# -- snapshot install -----------------------------------------------------------


def test_install_snapshot_replaces_log(storage: Storage) -> None:
    storage.save(None, ents(1, 10, term=1))
    sn = snap(7, 1)
    storage.save(HardState(term=2, vote=1, commit=7), [], sn)
    assert storage.snapshot() == sn
    assert storage.first_index() == 8
    assert storage.last_index() == 7  # entries after it are dropped too
    assert storage.term(7) == 1
    assert storage.initial_state() == (HardState(term=2, vote=1, commit=7), sn.meta.membership)


def test_install_snapshot_beyond_log(storage: Storage) -> None:
    storage.save(None, ents(1, 3))
    storage.save(None, [], snap(20, 5))
    assert storage.first_index() == 21
    assert storage.last_index() == 20
    assert storage.term(20) == 5
    with pytest.raises(CompactedError):
        storage.term(19)


def test_install_snapshot_with_entries(storage: Storage) -> None:
    storage.save(None, ents(1, 3))
    storage.save(HardState(term=6), ents(10, 13, term=6), snap(11, 5))
    assert log_of(storage) == [(12, 6), (13, 6)]
    assert storage.term(11) == 5
    assert storage.initial_state()[0] == HardState(term=6)


def test_install_snapshot_out_of_date(storage: Storage) -> None:
    storage.save(None, ents(1, 5))
    storage.create_snapshot(4, b"s", Membership.of({1}))
    with pytest.raises(SnapshotOutOfDateError):
        storage.save(None, ents(6, 6), snap(4, 1))
    with pytest.raises(SnapshotOutOfDateError):
        storage.save(None, [], snap(2, 1))
    assert log_of(storage) == [(i, 1) for i in range(1, 6)]
    assert storage.snapshot().meta.index == 4


def test_empty_snapshot_is_ignored(storage: Storage) -> None:
    storage.save(None, ents(1, 2), Snapshot())
    assert log_of(storage) == [(1, 1), (2, 1)]
    assert storage.snapshot().empty


def test_install_then_create_and_compact(storage: Storage) -> None:
    storage.save(None, [], snap(10, 2))
    storage.save(None, ents(11, 20, term=3))
    storage.create_snapshot(15, b"s15", Membership.of({4}))
    storage.compact(15)
    assert storage.first_index() == 16
    assert storage.snapshot().meta == SnapshotMeta(15, 3, Membership.of({4}))
    storage.save(None, [], snap(30, 4))
    assert storage.first_index() == 31
    assert storage.snapshot().data == b"sm30"


def test_many_entries_across_segments(storage: Storage) -> None:
    # 256-byte segments for the file storages: this spans dozens of them.
    for i in range(1, 161, 8):
        storage.save(HardState(term=1, commit=i - 1), ents(i, i + 7, size=30))
    storage.save(None, ents(150, 160, term=2, size=5))
    assert storage.last_index() == 160
    assert storage.term(149) == 1
    assert storage.term(150) == 2
    storage.create_snapshot(155, b"s", Membership.of({1}))
    storage.compact(150)
    assert log_of(storage)[0] == (151, 2)
    assert storage.entries(151, 161) == ents(151, 160, term=2, size=5)
