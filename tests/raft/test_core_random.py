"""A small randomized soak of the core (the thorough one is tests/sim/):
drops, duplicates, reordering, partitions and crash-restarts, checking
Election Safety and State Machine Safety (paper Figure 3) as it goes."""

from __future__ import annotations

from random import Random

import pytest

from raft.membership import Membership
from raft.types import Entry, Message, Role
from tests.raft.core_harness import Network, encode_state


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)

    def observe(self, net: Network) -> None:
        for c in net.cores.values():
            if c.role is Role.LEADER:
                prev = self.leaders.setdefault(c.term, c.id)
                assert prev == c.id, f"two leaders in term {c.term}: {prev}, {c.id}"

    def applied(self, node: int, e: Entry) -> None:
        got = (e.term, e.data)
        prev = self.committed.setdefault(e.index, got)
        assert prev == got, f"node {node} applied {got} at {e.index}, others {prev}"


def run(seed: int, steps: int = 600) -> tuple[Network, Checker]:
    rng = Random(seed)
    net = Network([1, 2, 3, 4, 5], seed=seed, max_size_per_msg=200, max_inflight_msgs=4)
    checker = Checker()
    original = net.handle_ready

    def handle_ready(i: int):  # type: ignore[no-untyped-def]
        rd = original(i)
        if rd is not None:
            for e in rd.committed_entries:
                checker.applied(i, e)
        return rd

    net.handle_ready = handle_ready  # type: ignore[method-assign]
    proposals = 0
    compactions = 0
    for _ in range(steps):
        r = rng.random()
        if r < 0.3:
            for c in net.cores.values():
                c.tick()
        elif r < 0.4:
            lead = net.leader()
            if lead is not None and lead.lead_transferee == -1:
                lead.propose(b"p%d" % proposals)
                proposals += 1
        elif r < 0.43:
            net.cut_links.clear()
            a, b = rng.sample(net.ids, 2)
            net.isolate(a)
            if rng.random() < 0.5:
                net.cut(b, rng.choice([i for i in net.ids if i not in (a, b)]))
        elif r < 0.46:
            net.cut_links.clear()
        elif r < 0.47:
            net.flush()
            net.restart(rng.choice(net.ids))
        elif r < 0.48:
            lead = net.leader()
            if lead is not None:
                lead.read_index(b"r%d" % rng.randrange(10**6))
        elif r < 0.49:
            lead = net.leader()
            if lead is not None:
                lead.transfer_leader(rng.choice(net.ids))
        elif r < 0.51:
            # The application snapshots and compacts (InstallSnapshot later).
            net.flush()
            i = rng.choice(net.ids)
            index = net.applied_index[i]
            if index > net.storages[i].snapshot().meta.index:
                net.storages[i].create_snapshot(
                    index, encode_state(net.applied[i]), Membership.of(net.ids)
                )
                net.storages[i].compact(index)
                compactions += 1
        net.flush()
        # Deliver a random part of the queue, reordered, some lost, some twice.
        batch: list[Message] = []
        keep: list[Message] = []
        for m in net.queue:
            x = rng.random()
            if x < 0.1:
                continue
            (batch if x < 0.8 else keep).append(m)
            if x > 0.97:
                batch.append(m)
        rng.shuffle(batch)
        net.queue = keep
        for m in batch:
            net.deliver(m)
        checker.observe(net)
    return net, checker


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_keep_safety_and_recover(seed: int) -> None:
    net, checker = run(seed)
    # Heal everything: the cluster must converge and make progress.
    net.heal()
    net.tick(n=60)
    lead = net.leader()
    assert lead is not None
    idx = net.propose(lead.id, b"final")
    net.tick(n=5)
    checker.observe(net)
    for i in net.ids:
        assert net.applied_index[i] >= idx, (i, net.cores[i])
    # Every state machine holds the same sequence, which is the committed log.
    expected = [data for _, (_, data) in sorted(checker.committed.items()) if data]
    for i in net.ids:
        assert net.applied[i] == expected, i
    assert len(checker.leaders) >= 2 and len(expected) >= 10
