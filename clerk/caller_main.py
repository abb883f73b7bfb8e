"""``callerMain``: the command-line client of the KV store.

    callerMain -f test.conf                      the seed's loop: put x=i, get x, print
    callerMain -f test.conf get K                prints the value alone
    callerMain -f test.conf put K V | append K V | delete K
    callerMain -f test.conf status               one line per node
    callerMain -f test.conf bench [--clients N] [--ops N] [--value-size B] [--keys K] [--reads F]

Exit 0 on success, 1 when the operation failed (timeout, unreachable
cluster, a wrong value in the loop), 2 on bad usage or config.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence

from clerk.client import AsyncClerk, ClerkTimeout
from kvserver import kv_pb2
from kvserver.config import ClusterConfig, ConfigError, load_config
from rpc import RpcChannel, RpcError, Stub
from rpc.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Parser, fail, positive_int
from rpc.loop import run

__all__ = ["main"]

PROG = "callerMain"


async def _loop(ck: AsyncClerk, count: int) -> int:
    # The seed's workload: count down, put x=i then read it back.
    for i in range(count - 1, -1, -1):
        await ck.put("x", str(i))
        value = await ck.get("x")
        print(f"get return :{{{value}}}", flush=True)
        if value != str(i):
            fail(PROG, f"get x returned {value!r}, expected {str(i)!r}")
    return EXIT_OK


async def _status(config: ClusterConfig, timeout: float) -> int:
    service = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]

    async def one(host: str, port: int) -> kv_pb2.StatusReply | str:
        async with RpcChannel(host, port, connect_timeout=timeout) as channel:
            try:
                reply: kv_pb2.StatusReply = await Stub(channel, service).Status(
                    kv_pb2.StatusRequest(), timeout=timeout
                )
                return reply
            except RpcError as exc:
                return exc.status.name.lower()

    replies = await asyncio.gather(*(one(n.host, n.port) for n in config.nodes))
    reachable = 0
    for node, reply in zip(config.nodes, replies, strict=True):
        if isinstance(reply, str):
            print(f"node {node.id} {node} unreachable ({reply})")
            continue
        reachable += 1
        leader = reply.leader if reply.leader >= 0 else "none"
        print(
            f"node {node.id} {node} {reply.role} term {reply.term} leader {leader} "
            f"commit {reply.commit_index} applied {reply.applied_index} "
            f"log {reply.first_index}..{reply.last_index} keys {reply.keys}"
        )
    return EXIT_OK if reachable else EXIT_FAILED


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _bench(ck: AsyncClerk, clients: int, ops: int, value_size: int, keys: int,
                 reads: float) -> int:
    rng = random.Random(1)
    value = "v" * value_size
    latencies: list[float] = []
    done = 0
    next_op = 0
    last_draw = 0.0

    def progress(final: bool = False) -> None:
        nonlocal last_draw
        now = time.perf_counter()
        if not final and now - last_draw < 0.1:
            return
        last_draw = now
        width = 40
        filled = width * done // ops
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{ops}")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    async def worker() -> None:
        nonlocal done, next_op
        while next_op < ops:
            next_op += 1
            key = f"key{rng.randrange(keys):012d}"
            start = time.perf_counter()
            if rng.random() < reads:
                await ck.get(key)
            else:
                await ck.put(key, value)
            latencies.append(time.perf_counter() - start)
            done += 1
            progress()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    progress(final=True)
    latencies.sort()
    print(
        f"bench: {ops} ops ({reads:.0%} gets), {clients} clients, {value_size}-byte values, "
        f"{keys} keys: {ops / elapsed:,.0f} ops/s, "
        f"p50 {_percentile(latencies, 0.50) * 1e3:.2f} ms, "
        f"p99 {_percentile(latencies, 0.99) * 1e3:.2f} ms"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Client of the replicated KV store.")
    parser.add_argument("-f", "--config", required=True, help="cluster config (seed format)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per operation")
    parser.add_argument("--count", type=positive_int, default=500,
                        help="iterations of the default loop")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    p = sub.add_parser("get", help="print the value of KEY")
    p.add_argument("key")
    p = sub.add_parser("put", help="set KEY to VALUE")
    p.add_argument("key")
    p.add_argument("value")
    p = sub.add_parser("append", help="append VALUE to KEY")
    p.add_argument("key")
    p.add_argument("value")
    p = sub.add_parser("delete", help="remove KEY")
    p.add_argument("key")
    sub.add_parser("status", help="one line per node: role, term, leader, indexes")
    p = sub.add_parser("bench", help="run a load and print ops/s and latency")
    p.add_argument("--clients", type=positive_int, default=64)
    p.add_argument("--ops", type=positive_int, default=10_000)
    p.add_argument("--value-size", type=positive_int, default=100)
    p.add_argument("--keys", type=positive_int, default=1000)
    p.add_argument("--reads", type=float, default=0.0, help="fraction of gets (0..1)")
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    if args.command == "bench" and not 0.0 <= args.reads <= 1.0:
        parser.error("--reads must be between 0 and 1")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        fail(PROG, str(exc), EXIT_USAGE)

    async def go() -> int:
        if args.command == "status":
            return await _status(config, min(args.timeout, 2.0))
        async with AsyncClerk(config.addresses, timeout=args.timeout) as ck:
            if args.command is None:
                return await _loop(ck, args.count)
            if args.command == "get":
                print(await ck.get(args.key))
            elif args.command == "put":
                await ck.put(args.key, args.value)
            elif args.command == "append":
                await ck.append(args.key, args.value)
            elif args.command == "delete":
                await ck.delete(args.key)
            elif args.command == "bench":
                return await _bench(ck, args.clients, args.ops, args.value_size, args.keys,
                                    args.reads)
            return EXIT_OK

    try:
        return run(go())
    except ClerkTimeout as exc:
        fail(PROG, f"{config.path}: {exc}")
    except KeyboardInterrupt:
        fail(PROG, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
