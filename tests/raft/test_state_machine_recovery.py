"""A node's start brings its state machine and its log into agreement
(``raft.snapshotter.recover_state_machine``): a state machine kept on disk
may be behind the log's snapshot (lost, or in memory) or ahead of the log
(a leader's snapshot was swapped in before the log recorded it)."""

from __future__ import annotations

import logging
from random import Random

from raft.core import Config, RaftCore
from raft.membership import Membership
from raft.snapshotter import recover_state_machine
from raft.storage import MemoryStorage
from raft.types import Entry, EntryType, HardState, SnapshotMeta
from tests.raft.cluster import RecordingStateMachine

LOG = logging.LoggerAdapter(logging.getLogger("test"), {"node_id": 1})
PEERS = frozenset({1, 2, 3})


def log_with(*terms: int, commit: int = 0) -> MemoryStorage:
    storage = MemoryStorage()
    entries = [Entry(index=i, term=t, data=b"e%d" % i) for i, t in enumerate(terms, start=1)]
    storage.save(HardState(term=terms[-1] if terms else 0, vote=1, commit=commit), entries)
    return storage


def test_a_state_machine_behind_the_snapshot_is_restored_from_it() -> None:
    storage = log_with(1, 1, 1, 2)
    fsm = RecordingStateMachine()
    fsm.apply([Entry(index=1, term=1, data=b"a"), Entry(index=2, term=1, data=b"b")])
    storage.create_snapshot(2, fsm.snapshot(), Membership.of(PEERS))
    storage.compact(2)
    fresh = RecordingStateMachine()
    assert recover_state_machine(storage, fresh, Membership.of(PEERS), LOG) == 2
    assert fresh.values == [b"a", b"b"] and fresh.applied_index == 2


def test_a_state_machine_ahead_of_the_log_restarts_the_log_after_it() -> None:
    storage = log_with(1, 1, 1, commit=1)
    fsm = RecordingStateMachine()
    fsm.apply([Entry(index=i, term=2 if i > 3 else 1, data=b"x") for i in range(1, 6)])
    assert recover_state_machine(storage, fsm, Membership.of(PEERS), LOG) == 5
    snap = storage.snapshot()
    assert (snap.meta.index, snap.meta.term) == (5, 2)
    assert storage.last_index() == 5 and storage.first_index() == 6
    # The core starts from there: entries through 5 are committed (they
    # were applied), and nothing is handed out again.
    core = RaftCore(Config(id=1, peers=PEERS, rng=Random(1), applied=5), storage)
    assert core.log.committed == 5 and core.log.applied == 5
    assert not core.log.has_next_committed_entries()


def test_applied_entries_count_as_committed_though_the_commit_index_lagged() -> None:
    """A state machine on disk applies an entry before the hard state that
    says it is committed is persisted (it need not be fsynced); the core
    must not start with applied > committed."""
    storage = log_with(1, 1, 1, commit=1)
    fsm = RecordingStateMachine()
    fsm.apply([Entry(index=1, term=1), Entry(index=2, term=1, data=b"x")])
    applied = recover_state_machine(storage, fsm, Membership.of(PEERS), LOG)
    assert applied == 2 and storage.last_index() == 3  # the log is kept
    core = RaftCore(Config(id=1, peers=PEERS, rng=Random(1), applied=applied), storage)
    assert core.log.committed == 2
    assert core.log.applied == 2


def test_a_state_machine_whose_last_entry_was_replaced_in_the_log_restarts_it() -> None:
    """The log's entry at the applied index has another term: the state
    machine came from a leader's snapshot, the log from before it."""
    storage = log_with(1, 1, 1)
    fsm = RecordingStateMachine()
    fsm.restore(b"", SnapshotMeta(index=3, term=4, membership=Membership.of(PEERS)))
    assert recover_state_machine(storage, fsm, Membership.of(PEERS), LOG) == 3
    assert storage.snapshot().meta == SnapshotMeta(index=3, term=4, membership=Membership.of(PEERS))
    assert storage.last_index() == 3 and storage.term(3) == 4


def test_entries_delivered_again_are_skipped() -> None:
    fsm = RecordingStateMachine()
    fsm.restore(b"", SnapshotMeta(index=3, term=1))
    results = fsm.apply([Entry(index=i, term=1, data=b"v%d" % i) for i in range(2, 6)]
                        + [Entry(index=6, term=1, type=EntryType.NOOP)])
    assert results == [None, None, 4, 5, None]
    assert fsm.applied_index == 6 and fsm.values == [b"v4", b"v5"]
