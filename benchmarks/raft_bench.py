"""Raft replication benchmark: a 3-node cluster over loopback, fsync on.

    python benchmarks/raft_bench.py [--proposals 20000] [--proposers 1,16,128] [--size 100]
                                    [--nodes 3] [--no-fsync] [--loop uvloop|asyncio]

The three ``RaftNode``s run in this one process (one event loop, one core),
each with its own ``FileStorage`` directory, talking through the real RPC
framework on 127.0.0.1. For each proposer count, that many coroutines
propose ``--size``-byte entries back to back on the leader until
``--proposals`` are committed and applied. Reported: committed proposals/s,
p50/p99 commit latency (propose -> applied on the leader), and fsyncs
(``Storage.save`` calls, each one fsync) per second and per proposal on the
leader: group commit makes that far below one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers.common import percentile  # noqa: E402
from rpc.loop import new_event_loop  # noqa: E402
from tests.raft.cluster import LocalCluster  # noqa: E402


async def one_run(tmp: Path, nodes: int, proposers: int, total: int, size: int,
                  fsync: bool) -> dict[str, float]:
    cluster = LocalCluster(tmp, nodes, tick_interval=0.025, election_tick=12, fsync=fsync)
    await cluster.start()
    try:
        leader = await cluster.wait_leader(20)
        node = cluster.node(leader)
        await node.propose(b"warmup")
        payload = b"x" * size
        latencies: list[float] = []
        remaining = total
        saves0 = node.metrics.saves
        follower_saves0 = [cluster.node(i).metrics.saves for i in cluster.ids if i != leader]

        async def proposer() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                await node.propose(payload)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(proposer() for _ in range(proposers)))
        elapsed = time.perf_counter() - start
        saves = node.metrics.saves - saves0
        follower_saves = [cluster.node(i).metrics.saves - s0 for i, s0 in
                          zip([i for i in cluster.ids if i != leader], follower_saves0,
                              strict=True)]
        return {
            "ops": total / elapsed,
            "p50": percentile(sorted(latencies), 50) * 1e3,
            "p99": percentile(sorted(latencies), 99) * 1e3,
            "fsyncs_per_s": saves / elapsed,
            "fsyncs_per_op": saves / total,
            "follower_fsyncs_per_s": statistics.mean(follower_saves) / elapsed,
        }
    finally:
        await cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proposals", type=int, default=20000)
    parser.add_argument("--proposers", default="1,16,128")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="unsafe; for comparison only")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    fsync = not args.no_fsync
    print(f"raft_bench: {args.nodes} nodes in one process over 127.0.0.1, "
          f"fsync {'on' if fsync else 'OFF'}, {args.size}-byte proposals, loop {args.loop}")
    print(f"{'proposers':>9} {'proposals':>9} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'fsync/s':>8} {'fsync/op':>8} {'flw fsync/s':>11}")
    for proposers in (int(p) for p in args.proposers.split(",")):
        total = args.proposals if proposers > 1 else min(args.proposals, 2000)
        loop = new_event_loop(use_uvloop=args.loop == "uvloop")
        try:
            with tempfile.TemporaryDirectory(prefix="raftbench-") as tmp:
                r = loop.run_until_complete(
                    one_run(Path(tmp), args.nodes, proposers, total, args.size, fsync))
        finally:
            loop.close()
        print(f"{proposers:>9} {total:>9} {r['ops']:>9,.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
              f"{r['fsyncs_per_s']:>8,.0f} {r['fsyncs_per_op']:>8.3f} "
              f"{r['follower_fsyncs_per_s']:>11,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
