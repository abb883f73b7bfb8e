"""ReadIndex (dissertation 6.4)."""

from __future__ import annotations

from raft.types import MessageType, ReadState, Role
from tests.raft.core_harness import Network


def test_read_index_waits_for_current_term_commit() -> None:
    net = Network([1, 2, 3])
    # Acks are lost: the new leader's noop is not committed yet.
    net.drop = lambda m: m.type is MessageType.APPEND_RESPONSE
    lead = net.elect(1)
    assert lead.log.committed == 0
    lead.read_index(b"r1")
    msgs = net.take_messages()
    assert not any(m.context == b"r1" for m in msgs)  # not even asked yet
    assert net.read_states[1] == []
    net.queue = msgs
    net.heal()
    net.tick([1], n=2)
    assert lead.log.committed == 1
    assert net.read_states[1] == [ReadState(index=1, context=b"r1")]


def test_read_index_needs_quorum_of_heartbeat_acks() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    net.propose(1, b"x")
    commit = lead.log.committed
    net.isolate(1)
    lead.read_index(b"r")
    net.tick([1], n=3)
    assert net.read_states[1] == []
    net.cut_links.clear()
    net.tick([1])
    assert net.read_states[1] == [ReadState(index=commit, context=b"r")]


def test_read_index_with_one_follower_ack_is_enough() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    net.cut(1, 3)
    lead.read_index(b"a")
    lead.read_index(b"b")
    net.stabilize()
    assert [r.context for r in net.read_states[1]] == [b"a", b"b"]


def test_leader_that_steps_down_drops_pending_reads() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    net.isolate(1)
    lead.read_index(b"r")
    net.tick([1], n=2 * lead.config.election_tick)  # check-quorum step-down
    assert lead.role is Role.FOLLOWER
    net.heal()
    net.tick(n=30)
    assert net.read_states[1] == []


def test_single_node_read_released_immediately() -> None:
    net = Network([1])
    lead = net.elect(1)
    lead.read_index(b"r")
    net.flush()
    assert net.read_states[1] == [ReadState(index=lead.log.committed, context=b"r")]


def test_read_state_index_covers_all_committed_writes() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    idx = net.propose(1, b"w")
    lead.read_index(b"r")
    net.stabilize()
    (rs,) = net.read_states[1]
    assert rs.index >= idx and net.applied_index[1] >= rs.index
