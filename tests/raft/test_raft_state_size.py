"""What --max-raft-state bounds: bytes of entries since the last snapshot,
a conflicting entry replacing the ones it overwrote."""

from __future__ import annotations

from raft.raft_state_size import RaftStateSize
from raft.types import Entry


def entry(index: int, term: int = 1, size: int = 10) -> Entry:
    return Entry(index=index, term=term, data=b"x" * size)


def test_counts_written_entries_forgets_snapshotted_and_replaces_conflicts() -> None:
    log = [entry(i) for i in range(1, 11)]
    state = RaftStateSize(log)
    assert state.bytes == sum(e.size() for e in log)
    state.snapshotted(4)
    assert state.bytes == sum(e.size() for e in log[4:])
    # A new leader's entry at 8 replaces 8, 9 and 10.
    new = entry(8, term=2, size=100)
    state.written(new)
    assert state.bytes == sum(e.size() for e in log[4:7]) + new.size()
    state.snapshotted(8)
    assert state.bytes == 0
    state.snapshotted(3)  # an older index changes nothing
    assert state.bytes == 0
    state.written(entry(9))
    assert state.bytes == entry(9).size()
