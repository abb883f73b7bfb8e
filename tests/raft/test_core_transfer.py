"""Leadership transfer (dissertation 3.10)."""

from __future__ import annotations

import pytest

from raft.core import ProposalDropped
from raft.types import MessageType, Role
from tests.raft.core_harness import Network


def test_transfer_to_up_to_date_follower() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    term = lead.term
    lead.transfer_leader(2)
    net.stabilize()
    assert net.cores[2].role is Role.LEADER and net.cores[2].term == term + 1
    assert lead.role is Role.FOLLOWER and lead.leader == 2


def test_transfer_catches_target_up_first() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    net.cut(1, 2)
    for k in range(5):
        net.propose(1, b"%d" % k)
    lead.transfer_leader(2)
    with pytest.raises(ProposalDropped):
        lead.propose(b"during transfer")
    net.stabilize()
    assert lead.role is Role.LEADER  # target unreachable: still waiting
    net.heal()
    net.tick([1])  # heartbeat -> response -> append -> caught up -> TIMEOUT_NOW
    assert net.cores[2].role is Role.LEADER
    net.tick(n=2)
    assert net.applied[2] == [b"%d" % k for k in range(5)]


def test_transfer_aborted_after_election_timeout() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    net.cut(1, 2)
    net.propose(1, b"x")
    lead.transfer_leader(2)
    assert lead.lead_transferee == 2
    net.tick([1], n=lead.config.election_tick)
    assert lead.lead_transferee == -1 and lead.role is Role.LEADER
    lead.propose(b"accepted again")


def test_timeout_now_bypasses_pre_vote_and_lease() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    lead.transfer_leader(3)
    msgs = net.take_messages()
    assert [m.type for m in msgs] == [MessageType.TIMEOUT_NOW]
    net.queue = msgs
    net.stabilize()
    assert net.cores[3].role is Role.LEADER


def test_transfer_to_self_or_non_voter() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    lead.transfer_leader(1)
    assert lead.lead_transferee == -1
    with pytest.raises(ValueError):
        lead.transfer_leader(9)
