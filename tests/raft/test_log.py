from __future__ import annotations

import pytest

from raft.log import RaftLog, Unstable
from raft.membership import Membership
from raft.storage import CompactedError, MemoryStorage, UnavailableError
from raft.types import Entry, HardState, Snapshot, SnapshotMeta


def ents(*spec: tuple[int, int]) -> list[Entry]:
    return [Entry(index=i, term=t, data=b"x" * 10) for i, t in spec]


def stored_log(terms: list[int]) -> RaftLog:
    s = MemoryStorage()
    s.save(HardState(term=terms[-1] if terms else 0), ents(*enumerate(terms, start=1)))
    return RaftLog(s)


def test_empty_log() -> None:
    log = RaftLog(MemoryStorage())
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert log.committed == log.applied == 0
    assert log.entries(1) == []


def test_append_goes_to_unstable_and_stable_to_moves_boundary() -> None:
    log = stored_log([1, 1])
    log.append(ents((3, 2), (4, 2)))
    assert log.unstable.offset == 3 and log.last_index() == 4
    assert [e.index for e in log.entries(1)] == [1, 2, 3, 4]
    assert log.persisted_index() == 2
    log.stable_to(4, 2)
    assert log.unstable.entries == [] and log.unstable.offset == 5
    assert log.persisted_index() == 4


def test_stable_to_ignores_overwritten_tail() -> None:
    # The Ready handed out (3,1),(4,1); before advance a new leader replaced 4.
    u = Unstable(3)
    u.truncate_and_append(ents((3, 1), (4, 1)))
    u.truncate_and_append(ents((4, 2)))
    u.stable_to(4, 1)
    assert [(e.index, e.term) for e in u.entries] == [(3, 1), (4, 2)]
    u.stable_to(3, 1)
    assert [(e.index, e.term) for e in u.entries] == [(4, 2)] and u.offset == 4


def test_truncate_and_append_before_offset_replaces_and_moves_offset_back() -> None:
    u = Unstable(5)
    u.truncate_and_append(ents((5, 1), (6, 1)))
    u.truncate_and_append(ents((3, 2)))
    assert u.offset == 3 and [(e.index, e.term) for e in u.entries] == [(3, 2)]


def test_term_bounds_raise_typed_errors() -> None:
    log = stored_log([1, 2, 3])
    assert log.term(0) == 0 and log.term(3) == 3
    with pytest.raises(UnavailableError):
        log.term(4)
    log.storage.create_snapshot(2, b"s", Membership.of({1}))  # type: ignore[attr-defined]
    log.storage.compact(2)  # type: ignore[attr-defined]
    assert log.first_index() == 3  # read dynamically from storage
    assert log.term(2) == 2
    with pytest.raises(CompactedError):
        log.term(1)
    with pytest.raises(CompactedError):
        log.entries(2)
    assert not log.match_term(1, 1)


def test_is_up_to_date_paper_5_4_1() -> None:
    log = stored_log([1, 2, 2])
    assert log.is_up_to_date(3, 2)  # same term, same length
    assert log.is_up_to_date(1, 3)  # later term wins even if shorter
    assert not log.is_up_to_date(2, 2)  # same term, shorter
    assert not log.is_up_to_date(10, 1)  # earlier term loses even if longer


def test_maybe_append_rules() -> None:
    log = stored_log([1, 1, 2, 2])
    # Rule 2: no entry at prev index with prev term.
    assert log.maybe_append(4, 3, 0, ents((5, 3))) is None
    assert log.maybe_append(7, 2, 0, []) is None
    # Rule 3+4: conflict at 3 truncates, appends.
    assert log.maybe_append(2, 1, 3, ents((3, 3), (4, 3))) == 4
    assert [e.term for e in log.all_entries()] == [1, 1, 3, 3]
    # Rule 5: commit = min(leader commit, last new).
    assert log.committed == 3
    # Already present entries: no truncation of what follows.
    assert log.maybe_append(1, 1, 3, ents((2, 1))) == 2
    assert log.last_index() == 4


def test_maybe_append_refuses_to_overwrite_committed() -> None:
    log = stored_log([1, 1, 2])
    log.commit_to(3)
    with pytest.raises(RuntimeError):
        log.maybe_append(1, 1, 3, ents((2, 5)))


def test_commit_to_never_decreases_nor_passes_last() -> None:
    log = stored_log([1, 1])
    log.commit_to(2)
    log.commit_to(1)
    assert log.committed == 2
    with pytest.raises(RuntimeError):
        log.commit_to(3)


def test_next_committed_entries_and_applying() -> None:
    log = stored_log([1, 1, 1])
    log.commit_to(2)
    assert [e.index for e in log.next_committed_entries()] == [1, 2]
    log.accept_applying(2)
    assert log.next_committed_entries() == []
    log.applied_to(2)
    log.commit_to(3)
    assert [e.index for e in log.next_committed_entries()] == [3]


def test_slice_respects_max_bytes_across_storage_and_unstable() -> None:
    log = stored_log([1, 1])
    log.append(ents((3, 1), (4, 1)))
    size = Entry(1, 1, b"x" * 10).size()
    assert [e.index for e in log.entries(1, max_bytes=size * 3)] == [1, 2, 3]
    assert [e.index for e in log.entries(2, max_bytes=1)] == [2]  # at least one


def test_restore_snapshot() -> None:
    log = stored_log([1, 1])
    snap = Snapshot(SnapshotMeta(index=10, term=3, membership=Membership.of({1, 2, 3})), b"data")
    log.restore(snap)
    assert log.committed == 10 and log.first_index() == 11 and log.last_index() == 10
    assert log.term(10) == 3
    assert log.persisted_index() == 0
    assert not log.has_next_committed_entries()
    assert log.snapshot() is snap
    log.stable_snap_to(10)
    assert log.unstable.snapshot is None


def test_find_conflict_by_term_and_first_index_of_term() -> None:
    log = stored_log([1, 1, 1, 4, 4, 5, 5, 6, 6, 6])
    assert log.find_conflict_by_term(10, 5) == 7
    assert log.find_conflict_by_term(10, 3) == 3
    assert log.find_conflict_by_term(20, 6) == 10
    assert log.find_conflict_by_term(10, 0) == 0
    assert log.first_index_of_term(9, floor=1) == 8
    assert log.first_index_of_term(3, floor=1) == 1
    assert log.first_index_of_term(3, floor=2) == 2
