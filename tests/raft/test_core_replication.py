"""Log replication (paper 5.3), safety (5.4), fast back-up, batching and
pipelining."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from raft.core import RaftCore
from raft.progress import ProgressState
from raft.types import Message, MessageType, Role
from tests.raft.core_harness import Network, msgs_of, set_log

FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIG7_FOLLOWERS))
def test_figure7_follower_log_brought_into_line(case: str) -> None:
    """Paper Figure 7: any of the follower logs (a-f) ends up equal to the
    leader's once the leader of term 8 replicates."""
    net = Network([1, 2, 3])
    set_log(net, 1, FIG7_LEADER, term=7)
    set_log(net, 2, FIG7_LEADER, term=7)  # a voter with the leader's log
    set_log(net, 3, FIG7_FOLLOWERS[case], term=7)
    lead = net.elect(1)
    assert lead.term == 8
    net.tick(n=3)
    assert net.log_terms(3) == net.log_terms(1) == [*FIG7_LEADER, 8]
    assert net.cores[3].log.committed == 11
    assert net.applied[3] == net.applied[1]


def test_leader_commits_only_current_term_entries_figure8() -> None:
    """Paper Figure 8 (c)-(e): S1 (term 4) replicates its term-2 entry at
    index 2 to a majority; that must not commit it, because S5 (term-3 entry
    at index 2) can still win and overwrite it."""
    net = Network([1, 2, 3, 4, 5], check_quorum=False, max_size_per_msg=1)
    set_log(net, 1, [1, 2], term=3)
    set_log(net, 2, [1, 2], term=3)
    set_log(net, 3, [1], term=3)
    set_log(net, 4, [1], term=3)
    set_log(net, 5, [1, 3], term=3)
    for i in net.ids:  # index 1 is committed everywhere
        net.cores[i].log.commit_to(1)
    net.isolate(5)
    # S1 wins term 4 but its term-4 entries never get out.
    net.mutate = strip_term(4)
    net.elect(1)
    assert net.cores[1].term == 4
    assert net.cores[3].log.term(2) == 2  # index 2 is now on S1, S2, S3
    assert net.cores[1].log.committed == 1  # ... and still not committed
    # S1 crashes; S5 wins with S2, S3, S4 and overwrites index 2.
    net.heal()
    net.isolate(1)
    net.cores[5].campaign()  # rejected, but learns term 4
    net.stabilize()
    net.elect(5)
    net.tick([2, 3, 4, 5], n=3)
    for i in (2, 3, 4, 5):
        assert net.cores[i].log.term(2) == 3
    net.heal()
    net.tick(n=3)
    assert net.log_terms(1) == net.log_terms(5)
    assert len({tuple(a) for a in net.applied.values()}) == 1


def strip_term(term: int) -> Callable[[Message], Message]:
    """Lose every entry of ``term`` from APPENDs in flight."""

    def mutate(m: Message) -> Message:
        if m.type is MessageType.APPEND and any(e.term == term for e in m.entries):
            return replace(m, entries=tuple(e for e in m.entries if e.term != term))
        return m

    return mutate


class CountingCommit(RaftCore):
    """An injected bug: commits any majority-replicated entry (no term check)."""

    def _maybe_commit(self) -> bool:
        from raft.quorum import committed_index

        index = committed_index(self.peers, {p: pr.match for p, pr in self.progress.items()})
        if index <= self.log.committed:
            return False
        self.log.commit_to(index)
        return True


def test_figure8_with_counting_commit_rule_commits_what_gets_overwritten() -> None:
    """The same scenario with the buggy rule: S1 commits index 2 (term 2),
    which S5 later overwrites -- the safety violation Figure 8 warns of."""
    net = Network([1, 2, 3, 4, 5], check_quorum=False, max_size_per_msg=1)
    for i, terms in {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]}.items():
        set_log(net, i, terms, term=3)
    net.cores[1] = CountingCommit(net.cores[1].config, net.storages[1])
    net.isolate(5)
    net.mutate = strip_term(4)
    net.elect(1)
    assert net.cores[1].log.committed == 2  # committed by counting: wrong
    assert net.applied_index[1] == 2
    net.heal()
    net.isolate(1)
    net.cores[5].campaign()  # rejected, but learns term 4
    net.stabilize()
    net.drop = lambda m: m.type is MessageType.APPEND
    net.elect(5)
    # Leader Completeness is broken: the new leader lacks a "committed" entry.
    assert net.cores[5].log.term(2) == 3 != net.cores[1].log.term(2)


def test_leader_of_minority_cannot_commit() -> None:
    net = Network([1, 2, 3, 4, 5])
    net.elect(1)
    base = net.cores[1].log.committed
    for i in (3, 4, 5):
        net.cut(1, i)
        net.cut(2, i)
    net.propose(1, b"minority")
    net.tick([1, 2], n=5)
    assert net.cores[1].log.committed == base
    assert all(b"minority" not in a for a in net.applied.values())
    net.tick([3, 4, 5], n=30)  # the majority side elects a leader
    lead = net.leader()
    assert lead is not None and lead.id in (3, 4, 5)
    net.propose(lead.id, b"majority")
    net.heal()
    net.tick(n=30)
    for i in net.ids:
        assert net.applied[i] == [b"majority"], i
        assert not any(e.data == b"minority" for e in net.cores[i].log.all_entries())


def test_fast_backup_uses_few_round_trips() -> None:
    """A follower holding 50 entries of a stale term is fixed with one
    rejection per conflicting term, not one per entry."""
    net = Network([1, 2, 3])
    leader_log = [1] * 5 + [3] * 50
    set_log(net, 1, leader_log, term=3)
    set_log(net, 2, leader_log, term=3)
    set_log(net, 3, [1] * 5 + [2] * 50, term=3)
    rejections: list[Message] = []

    def spy(m: Message) -> bool:
        if m.type is MessageType.APPEND_RESPONSE and m.reject:
            rejections.append(m)
        return False

    net.drop = spy
    net.elect(1)
    net.tick(n=2)
    assert net.log_terms(3) == net.log_terms(1)
    assert len([m for m in rejections if m.src == 3]) <= 2


def test_fast_backup_when_follower_is_short() -> None:
    net = Network([1, 2, 3])
    set_log(net, 1, [1] * 40, term=1)
    set_log(net, 2, [1] * 40, term=1)
    set_log(net, 3, [1] * 3, term=1)
    rejections: list[Message] = []

    def spy(m: Message) -> bool:
        if m.reject and m.src == 3:
            rejections.append(m)
        return False

    net.drop = spy
    net.elect(1)
    assert net.log_terms(3) == net.log_terms(1)
    assert len(rejections) <= 1


def test_batching_many_proposals_share_one_append() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    for k in range(100):
        lead.propose(b"%d" % k)
    msgs = net.take_messages()
    appends = msgs_of(msgs, MessageType.APPEND)
    assert sorted(m.dst for m in appends) == [2, 3]
    assert all(len(m.entries) == 100 for m in appends)
    net.queue = msgs
    net.stabilize()
    net.tick(n=2)
    assert all(len(net.applied[i]) == 100 for i in net.ids)


def test_batching_respects_max_size_and_pipelining_respects_inflights() -> None:
    net = Network([1, 2, 3], max_size_per_msg=100, max_inflight_msgs=3)
    lead = net.elect(1)
    assert lead.progress[2].state is ProgressState.REPLICATE
    for _k in range(50):
        lead.propose(b"x" * 30)  # 54 bytes each: one entry per APPEND
    msgs = net.take_messages()
    to2 = [m for m in msgs if m.dst == 2 and m.type is MessageType.APPEND]
    assert len(to2) == 3  # window of 3 in flight, not 50
    assert all(sum(e.size() for e in m.entries) <= 100 for m in to2)
    net.queue = msgs
    net.stabilize()  # each ack opens the window again
    net.tick(n=2)
    assert all(len(net.applied[i]) == 50 for i in net.ids)


def test_inflight_bytes_bound() -> None:
    net = Network([1, 2, 3], max_size_per_msg=1000, max_inflight_bytes=2000)
    lead = net.elect(1)
    for _k in range(40):
        lead.propose(b"y" * 476)  # 500 bytes: 2 per APPEND
    to2 = [m for m in net.take_messages() if m.dst == 2 and m.type is MessageType.APPEND]
    assert len(to2) == 2  # 2 x 1000 bytes fill the window


def test_probe_state_sends_one_append_at_a_time() -> None:
    net = Network([1, 2, 3], max_size_per_msg=1)
    net.elect(1)
    net.isolate(3)
    for k in range(10):
        net.propose(1, b"%d" % k)
    lead = net.cores[1]
    lead.report_unreachable(3)
    assert lead.progress[3].state is ProgressState.PROBE
    net.heal()
    net.tick([1])
    to3 = [m for m in net.take_messages() if m.dst == 3 and m.type is MessageType.APPEND]
    assert len(to3) <= 1


def test_followers_apply_same_sequence_under_leader_changes() -> None:
    net = Network([1, 2, 3, 4, 5], seed=3)
    net.tick(n=30)
    for round_ in range(5):
        lead = net.leader()
        assert lead is not None
        for k in range(5):
            net.propose(lead.id, b"%d-%d" % (round_, k))
        net.isolate(lead.id)
        net.tick(n=30)
        net.heal()
        net.tick(n=5)
    seqs = [net.applied[i] for i in net.ids]
    longest = max(seqs, key=len)
    assert all(s == longest[: len(s)] for s in seqs)
    assert len(longest) >= 20
    assert all(c.role in (Role.LEADER, Role.FOLLOWER) for c in net.cores.values())


def test_pipeline_recovers_when_whole_window_is_lost() -> None:
    net = Network([1, 2, 3], max_size_per_msg=1, max_inflight_msgs=2)
    lead = net.elect(1)
    net.drop = lambda m: m.type is MessageType.APPEND and m.dst == 3
    for k in range(6):
        lead.propose(b"%d" % k)
    net.stabilize()
    assert lead.progress[3].inflights.full()
    net.heal()
    net.tick(n=5)  # heartbeat acks free the window; the gap is probed
    assert net.applied[3] == [b"%d" % k for k in range(6)]


def test_lost_appends_in_replicate_state_are_repaired() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    dropped: list[Message] = []

    def drop_one(m: Message) -> bool:
        if m.type is MessageType.APPEND and m.dst == 3 and m.entries and not dropped:
            dropped.append(m)
            return True
        return False

    net.drop = drop_one
    net.propose(1, b"a")  # lost on the way to 3
    net.propose(1, b"b")  # 3 rejects: gap
    net.tick(n=2)
    assert dropped and net.applied[3] == [b"a", b"b"]
    assert lead.progress[3].match == lead.log.last_index()
