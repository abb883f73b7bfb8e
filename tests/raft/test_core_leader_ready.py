"""``RaftCore.leader_ready``: a leader keeps replicating while its last
Ready is being persisted (dissertation 10.2.1: the leader's own write may
run in parallel with replication; its entries count toward commit only
once durable)."""

from __future__ import annotations

import pytest

from raft.core import NotLeader
from raft.types import MessageType
from tests.raft.core_harness import Network


def test_followers_commit_while_the_leaders_write_is_in_flight() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    lead.propose(b"a")
    rd = lead.ready()  # taken, written "in a worker thread", not advanced yet
    assert [e.data for e in rd.entries] == [b"a"]
    index = rd.entries[0].index
    appends = [m for m in rd.messages if m.type is MessageType.APPEND]
    assert {m.dst for m in appends} == {2, 3}
    for m in appends:
        net.deliver(m)
    net.flush_nodes([2, 3])
    acks = net.take_queue(dst=1)
    # A proposal arriving meanwhile is sent at once, before any write of it.
    lead.propose(b"b")
    for m in acks:
        lead.step(m)
    assert lead.has_leader_ready()
    part = lead.leader_ready()
    assert not part.entries and part.hard_state is None and part.snapshot is None
    # Both followers hold "a": committed without the leader's disk.
    assert [e.data for e in part.committed_entries] == [b"a"]
    assert part.committed_entries[0].index == index
    # "b" goes to both followers at once, before the leader has written it
    # (with broadcast_commit, empty appends announce the new commit too).
    sent_b = [m for m in part.messages if m.type is MessageType.APPEND and m.entries]
    assert sorted(m.dst for m in sent_b) == [2, 3]
    assert all([e.data for e in m.entries] == [b"b"] for m in sent_b)
    lead.advance(part)
    assert not lead.has_leader_ready()
    # The full Ready completes later; the next one writes "b".
    net.storages[1].save(rd.hard_state, rd.entries, rd.snapshot)
    lead.advance(rd)
    nxt = lead.ready()
    assert [e.data for e in nxt.entries] == [b"b"]
    assert not nxt.committed_entries  # "a" was handed out already, exactly once
    assert not [m for m in nxt.messages if m.type is MessageType.APPEND and m.entries]


def test_the_leaders_own_unwritten_entry_does_not_count() -> None:
    """With one follower unreachable, the leader's unpersisted entry must not
    make a quorum: nothing commits until the full Ready is advanced."""
    net = Network([1, 2, 3])
    lead = net.elect(1)
    lead.propose(b"a")
    rd = lead.ready()
    for m in rd.messages:
        if m.dst == 2:
            net.deliver(m)
    net.flush_nodes([2])
    for m in net.take_queue(dst=1):
        lead.step(m)
    index = rd.entries[0].index
    assert lead.log.committed < index
    if lead.has_leader_ready():
        assert not lead.leader_ready().committed_entries
    net.storages[1].save(rd.hard_state, rd.entries, rd.snapshot)
    lead.advance(rd)  # now durable: leader + follower 2 are a quorum
    assert [e.data for e in lead.ready().committed_entries] == [b"a"]


def test_only_a_leader_has_one() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    follower = net.cores[2]
    assert not follower.has_leader_ready()
    with pytest.raises(NotLeader):
        follower.leader_ready()
