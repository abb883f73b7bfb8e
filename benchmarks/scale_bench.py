"""Scale benchmark (issue 14): does the store's cost grow with its data?

    .venv/bin/python benchmarks/scale_bench.py [--keys 1000000] [--concurrency 128]
                                               [--max-raft-state 32MiB] [--value-bytes 100]

Starts 3 ``kvserver`` processes on 127.0.0.1 (fsync on, the default
compaction unless ``--max-raft-state`` says otherwise), then:

1. **load**: ``--keys`` puts of ``--value-bytes`` bytes, distinct keys, with
   ``--concurrency`` in flight through one ``AsyncClerk``. Reported: ops/s,
   p50/p99/max put latency, and the seconds of the run that had a put
   slower than 300 ms (a stall: a step of some event loop proportional to
   the data shows up here), plus the leader changes (terms) meanwhile.
2. **size**: each node's RSS and data dir size (store, snapshot file, WAL).
3. **restart**: ``kill -9`` of all three, restart, and the seconds until the
   first successful linearizable get: what a node must rebuild before it
   serves.

The reference is the in-memory release this replaced (issue 14's report,
same machine, 1M keys, --max-raft-state 32MiB): puts waited up to 8.8 s, 33
of 213 s had a put slower than 300 ms, the first get came 13 s after the
restart, 429 MB RSS per node. Printed beside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clerk import AsyncClerk  # noqa: E402
from kvserver import kv_pb2  # noqa: E402
from kvserver.launcher import Cluster  # noqa: E402
from rpc import RpcChannel, Stub  # noqa: E402
from rpc.cli import byte_size  # noqa: E402

SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]
#: The in-memory release, measured in issue 14 (1M keys, 32MiB).
REFERENCE = {"max_put_s": 8.8, "stalled_s": "33 of 213", "restart_s": 13.0, "rss_mb": 429}


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def terms(addresses: list[tuple[str, int]]) -> list[int | None]:
    async def one(host: str, port: int) -> int | None:
        try:
            async with RpcChannel(host, port) as ch:
                reply = await Stub(ch, SERVICE).Status(kv_pb2.StatusRequest(), timeout=2)
                return int(reply.term)
        except Exception:  # a node that is down answers nothing
            return None
    return await asyncio.gather(*(one(h, p) for h, p in addresses))


async def load(addresses: list[tuple[str, int]], keys: int, concurrency: int,
               value: bytes) -> tuple[list[float], dict[int, float]]:
    """Put every key once; latencies and, per second of the run, the slowest put."""
    latencies: list[float] = []
    worst_by_second: dict[int, float] = {}
    start = time.perf_counter()
    next_key = 0
    async with AsyncClerk(addresses, timeout=60) as ck:
        async def worker() -> None:
            nonlocal next_key
            while next_key < keys:
                i = next_key
                next_key += 1
                t = time.perf_counter()
                await ck.put(b"key%012d" % i, value)
                done = time.perf_counter()
                latencies.append(done - t)
                second = int(done - start)
                worst_by_second[second] = max(worst_by_second.get(second, 0.0), done - t)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, worst_by_second


async def first_get(addresses: list[tuple[str, int]], deadline: float) -> float:
    start = time.monotonic()
    async with AsyncClerk(addresses, timeout=deadline) as ck:
        await ck.get(b"key%012d" % 0)
    return time.monotonic() - start


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--max-raft-state", type=byte_size, default=None,
                    help="passed to kvserver (default: kvserver's default)")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    extra = ["--max-raft-state", str(args.max_raft_state)] if args.max_raft_state else []
    cluster = Cluster(base / "cluster.conf", 3, base, extra)
    print(f"scale_bench: 3 kvserver nodes, {args.keys} puts of {args.value_bytes}-byte values, "
          f"{args.concurrency} in flight through one AsyncClerk, max-raft-state "
          f"{args.max_raft_state or 'default'}; data in {base}")
    try:
        cluster.start()
        addrs = cluster.addresses
        asyncio.run(first_get(addrs, 30))  # a leader exists
        before = asyncio.run(terms(addrs))
        t = time.perf_counter()
        latencies, worst = asyncio.run(load(addrs, args.keys, args.concurrency,
                                            b"v" * args.value_bytes))
        elapsed = time.perf_counter() - t
        after = asyncio.run(terms(addrs))
        latencies.sort()
        stalled = sum(1 for w in worst.values() if w > 0.3)
        print(f"load:    {args.keys / elapsed:,.0f} puts/s over {elapsed:.0f} s; put latency "
              f"p50 {percentile(latencies, 0.5) * 1e3:.1f} ms, p99 "
              f"{percentile(latencies, 0.99) * 1e3:.1f} ms, max {latencies[-1]:.2f} s "
              f"(in-memory release: {REFERENCE['max_put_s']} s)")
        print(f"stalls:  {stalled} of {len(worst)} s had a put slower than 300 ms "
              f"(in-memory release: {REFERENCE['stalled_s']}); terms {before} -> {after}")
        for i, proc in sorted(cluster.procs.items()):
            node_dir = base / f"node{i}"
            print(f"node {i}:  RSS {rss_mb(proc.pid):.0f} MB (in-memory release: "
                  f"{REFERENCE['rss_mb']} MB); data dir {dir_mb(node_dir):.0f} MB "
                  f"(store {dir_mb(node_dir / 'kv'):.0f}, snapshot files "
                  f"{dir_mb(node_dir / 'kv-snap'):.0f}, wal {dir_mb(node_dir / 'wal'):.0f})")
        for i in range(3):
            cluster.kill(i, signal.SIGKILL)
        t = time.monotonic()
        for i in range(3):
            cluster.start_node(i)
        asyncio.run(first_get(addrs, 120))
        restart = time.monotonic() - t
        print(f"restart: first get {restart:.1f} s after kill -9 of all three and restart "
              f"(in-memory release: {REFERENCE['restart_s']} s)")
    finally:
        cluster.stop()
        if not args.keep_tmp:
            for path in sorted(base.rglob("*"), reverse=True):
                if path.is_file() or path.is_symlink():
                    path.unlink()
                else:
                    path.rmdir()
            base.rmdir()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
