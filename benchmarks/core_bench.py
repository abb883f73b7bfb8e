"""Throughput of the pure Raft core, without I/O.

A 3-node cluster over ``MemoryStorage``; messages are delivered
synchronously in memory, so this measures the consensus code alone (the
ceiling the asyncio node and the WAL can approach, not a cluster number).

    python benchmarks/core_bench.py [--entries 100000] [--batch 1000] [--size 64]
"""

from __future__ import annotations

import argparse
import time
from random import Random

from raft.core import Config, RaftCore
from raft.membership import Membership
from raft.ready_processor import ReadyProcessor
from raft.storage import MemoryStorage
from raft.types import Entry, Message, ReadState, Role, Snapshot, SoftState


class _Hooks:
    """Node ``i``'s outbox and applied index, for the shared driver."""

    def __init__(self, cluster: Cluster, i: int) -> None:
        self.cluster = cluster
        self.i = i

    def send(self, msg: Message) -> None:
        self.cluster.queue.append(msg)

    def apply(self, entries: tuple[Entry, ...]) -> None:
        self.cluster.applied[self.i] = entries[-1].index

    def restore(self, snapshot: Snapshot) -> None:
        pass

    def read_ready(self, read: ReadState) -> None:
        pass

    def role_changed(self, soft: SoftState) -> None:
        pass

    def flush(self) -> None:
        pass

    def membership_changed(self, membership: Membership) -> None:
        pass


class Cluster:
    def __init__(self, n: int) -> None:
        ids = list(range(1, n + 1))
        self.storages = {i: MemoryStorage() for i in ids}
        self.cores = {
            i: RaftCore(Config(id=i, peers=frozenset(ids), rng=Random(i)), self.storages[i])
            for i in ids
        }
        self.applied = dict.fromkeys(ids, 0)
        self.messages = 0
        self.queue: list[Message] = []
        # The driver RaftNode and the simulator use too.
        self.procs = {i: ReadyProcessor(self.cores[i], self.storages[i], _Hooks(self, i))
                      for i in ids}

    def stabilize(self) -> None:
        while True:
            for i, proc in self.procs.items():
                proc.run_until_idle(self.storages[i].sync)
            if not self.queue:
                return
            self.messages += len(self.queue)
            batch, self.queue = self.queue, []
            for m in batch:
                self.cores[m.dst].step(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000, help="proposals between two Readys")
    ap.add_argument("--size", type=int, default=64, help="bytes per proposal")
    ap.add_argument("--ticks", type=int, default=100_000)
    args = ap.parse_args()

    c = Cluster(3)
    c.cores[1].campaign()
    c.stabilize()
    leader = c.cores[1]
    assert leader.role is Role.LEADER
    payload = b"x" * args.size

    start = time.perf_counter()
    proposed = 0
    while proposed < args.entries:
        n = min(args.batch, args.entries - proposed)
        for _ in range(n):
            leader.propose(payload)
        proposed += n
        c.stabilize()
    # One heartbeat round tells the followers the final commit index.
    leader.tick()
    c.stabilize()
    elapsed = time.perf_counter() - start
    last = leader.log.last_index()
    assert all(a == last for a in c.applied.values()), c.applied
    print(
        f"proposals: {args.entries} x {args.size} B in batches of {args.batch}: "
        f"{elapsed:.2f} s, {args.entries / elapsed:,.0f} committed/s "
        f"(applied on all 3 nodes), {c.messages:,} messages"
    )

    msgs_before = c.messages
    start = time.perf_counter()
    for _ in range(args.ticks):
        for core in c.cores.values():
            core.tick()
        c.stabilize()
    elapsed = time.perf_counter() - start
    assert leader.role is Role.LEADER
    print(
        f"ticks: {args.ticks} cluster ticks (3 cores, heartbeats delivered): {elapsed:.2f} s, "
        f"{3 * args.ticks / elapsed:,.0f} core ticks/s, "
        f"{(c.messages - msgs_before) / elapsed:,.0f} messages/s"
    )


if __name__ == "__main__":
    main()
