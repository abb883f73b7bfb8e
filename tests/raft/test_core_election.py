"""Elections (paper 5.2), pre-vote (dissertation 9.6), check-quorum and the
leader lease (dissertation 6.2, 4.2.3), term handling across partitions."""

from __future__ import annotations

from raft.types import NONE, MessageType, Role
from tests.raft.core_harness import Network


def test_three_nodes_elect_exactly_one_leader_by_ticking() -> None:
    net = Network([1, 2, 3])
    net.tick(n=25)
    leaders = [c for c in net.cores.values() if c.role is Role.LEADER]
    assert len(leaders) == 1
    lead = leaders[0]
    assert all(c.leader == lead.id and c.term == lead.term for c in net.cores.values())


def test_elections_are_deterministic_given_the_seed() -> None:
    def run(seed: int) -> tuple[int, int]:
        net = Network([1, 2, 3, 4, 5], seed=seed)
        net.tick(n=40)
        lead = net.leader()
        assert lead is not None
        return lead.id, lead.term

    assert run(7) == run(7)


def test_partitioned_leader_with_stale_term_steps_down() -> None:
    net = Network([1, 2, 3], check_quorum=False)
    net.elect(1)
    old_term = net.cores[1].term
    net.isolate(1)
    net.elect(2)
    assert net.cores[1].role is Role.LEADER  # it does not know yet
    net.heal()
    net.tick([1])  # its heartbeat reaches a newer term; the answer deposes it
    assert net.cores[1].role is Role.FOLLOWER and net.cores[1].term > old_term
    net.tick([2])
    assert net.cores[1].leader == 2


def test_stale_leader_told_newer_term_by_append_response() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.tick([2, 3], n=30)  # the lease expires; one of them takes over
    new = net.leader()
    assert new is not None and new.id != 1
    net.heal()
    net.cores[1].propose(b"lost")
    net.stabilize()
    assert net.cores[1].role is Role.FOLLOWER
    net.tick(n=3)
    assert all(b"lost" not in a for a in net.applied.values())


def test_check_quorum_leader_steps_down_without_majority() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.tick([1], n=net.cores[1].config.election_tick - 1)
    assert net.cores[1].role is Role.LEADER
    net.tick([1], n=net.cores[1].config.election_tick + 1)
    assert net.cores[1].role is Role.FOLLOWER and net.cores[1].leader == NONE


def test_leader_stays_with_majority_active() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.cut(1, 3)
    net.tick([1, 2], n=50)
    assert net.cores[1].role is Role.LEADER


def test_pre_vote_prevents_disruption_by_rejoining_node() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    term = net.cores[1].term
    net.isolate(3)
    net.tick([3], n=100)  # many election timeouts while partitioned
    assert net.cores[3].term == term  # pre-votes never bump the term
    net.heal()
    net.tick(n=30)
    assert net.cores[1].role is Role.LEADER and net.cores[1].term == term


def test_without_pre_vote_rejoining_node_disrupts() -> None:
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    net.elect(1)
    term = net.cores[1].term
    net.isolate(3)
    net.tick([3], n=100)
    assert net.cores[3].term > term
    net.heal()
    net.tick(n=30)
    assert net.cores[1].term > term  # the leader was deposed


def test_lease_ignores_vote_from_node_that_missed_heartbeats() -> None:
    # Check-quorum without pre-vote: the lease alone protects the leader.
    net = Network([1, 2, 3], pre_vote=False)
    net.elect(1)
    term = net.cores[1].term
    net.isolate(3)
    net.tick([3], n=25)
    assert net.cores[3].term > term
    net.heal()
    net.cores[3].campaign()
    net.stabilize()
    assert net.cores[1].role is Role.LEADER or net.leader() is not net.cores[3]


def test_split_vote_resolves_by_randomized_timeouts() -> None:
    net = Network([1, 2, 3, 4], pre_vote=False)
    # Everyone campaigns at once: no majority for anyone this term.
    for c in net.cores.values():
        c.campaign()
    net.stabilize()
    assert net.leader() is None
    net.tick(n=40)
    assert net.leader() is not None


def test_candidate_with_stale_log_cannot_win() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"%d" % k)
    net.heal()
    net.isolate(1)
    net.cores[3].campaign()
    net.stabilize()
    assert net.cores[3].role is not Role.LEADER
    net.tick([2, 3], n=40)
    assert net.cores[2].role is Role.LEADER


def test_vote_messages_only_after_hard_state_in_same_ready() -> None:
    net = Network([1, 2, 3], pre_vote=False)
    net.cores[1].campaign()
    rd = net.cores[1].ready()
    assert rd.hard_state is not None and rd.hard_state.vote == 1
    assert {m.type for m in rd.messages} == {MessageType.VOTE}
