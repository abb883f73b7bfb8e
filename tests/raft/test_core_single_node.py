"""A one-node cluster elects itself and commits on its own persistence."""

from __future__ import annotations

from random import Random

from raft.core import Config, RaftCore
from raft.storage import MemoryStorage
from raft.types import Role
from tests.raft.core_harness import Network, drive


def test_single_node_self_elects_by_ticking() -> None:
    net = Network([1])
    net.tick(n=25)
    assert net.cores[1].role is Role.LEADER


def test_single_node_commits_after_persist() -> None:
    net = Network([1])
    net.elect(1)
    idx = net.propose(1, b"a")
    assert net.cores[1].log.committed == idx and net.applied[1] == [b"a"]


def test_single_node_restart_keeps_log_and_reelects() -> None:
    net = Network([1])
    net.elect(1)
    for k in range(3):
        net.propose(1, b"%d" % k)
    term = net.cores[1].term
    net.restart(1)
    assert net.cores[1].role is Role.FOLLOWER and net.cores[1].term == term
    net.elect(1)
    net.flush()
    assert net.applied[1] == [b"0", b"1", b"2"]
    assert net.cores[1].term == term + 1


def test_no_messages_in_single_node_cluster() -> None:
    c = RaftCore(Config(id=1, peers=frozenset({1}), rng=Random(0)), MemoryStorage())
    c.campaign()
    drive(c)  # its own vote, durable, makes it leader
    c.propose(b"x")
    rd = c.ready()
    assert rd.messages == () and rd.messages_after_persist == ()
