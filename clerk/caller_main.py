"""``callerMain``: the command-line client of the KV store.

    callerMain -f test.conf                      the seed's loop: put x=i, get x, print
    callerMain -f test.conf get K                prints the value alone
    callerMain -f test.conf put K V | append K V | delete K
    callerMain -f test.conf status               one line per node
    callerMain -f test.conf transfer-leader [ID] make node ID (default: the most
                                                 up-to-date follower) the leader;
                                                 prints the new leader's id
    callerMain -f test.conf bench [--clients N] [--ops N] [--value-size B] [--keys K] [--reads F]

Keys and values must be valid UTF-8 (a command-line argument that is not
is refused with exit 2). Exit 0 on success, 1 when the operation failed
(timeout, unreachable cluster, a transfer that did not finish, a wrong
value in the loop), 2 on bad usage or config (an ID not in the config).
Always one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence

from clerk.client import AsyncClerk, BadRequest, ClerkError, TooLarge
from kvserver import kv_pb2
from kvserver.config import ClusterConfig, ConfigError, load_config
from rpc import RpcChannel, RpcError, Stub
from rpc.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    bounded_float,
    fail,
    int_at_most,
    positive_int,
)
from rpc.loop import run

__all__ = ["main"]

PROG = "callerMain"
MAX_TIMEOUT = 86_400.0
MAX_CLIENTS = 10_000
MAX_VALUE_SIZE = 4 << 20


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


async def _transfer_leader(config: ClusterConfig, to: int, timeout: float) -> int:
    """Ask the leader to hand over to ``to`` (-1: its best follower),
    following WRONG_LEADER hints to find it; print the new leader's id."""
    service = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    nodes = config.nodes
    channels = [RpcChannel(n.host, n.port, connect_timeout=min(timeout, 1.0)) for n in nodes]
    server = 0
    tried_in_round = 0
    problem = "no node answered"
    try:
        while (remaining := deadline - loop.time()) > 0:
            try:
                reply: kv_pb2.TransferLeaderReply = await Stub(
                    channels[server], service
                ).TransferLeader(kv_pb2.TransferLeaderRequest(to=to), timeout=remaining)
            except RpcError as exc:
                problem = f"node {server}: {exc.status.name.lower()}"
                server = (server + 1) % len(nodes)
            else:
                if reply.err == kv_pb2.OK:
                    print(reply.leader)
                    return EXIT_OK
                if reply.err == kv_pb2.BAD_REQUEST:
                    fail(PROG, f"node {server} refused: {reply.error}", EXIT_USAGE)
                if reply.err == kv_pb2.TIMEOUT:
                    fail(PROG, f"node {server}: {reply.error or 'transfer timed out'}")
                problem = f"node {server}: {kv_pb2.ErrorCode.Name(reply.err)}"
                hint = reply.leader_hint
                if reply.err == kv_pb2.WRONG_LEADER and 0 <= hint < len(nodes) \
                        and hint != server:
                    server = hint
                    continue  # a fresh hint is worth following at once
                server = (server + 1) % len(nodes)
            tried_in_round += 1
            if tried_in_round >= len(nodes):
                # A whole round without a leader: an election is under way.
                tried_in_round = 0
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
    finally:
        for channel in channels:
            await channel.close()
    fail(PROG, f"{config.path}: transfer-leader timed out after {timeout:g} s ({problem})")


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
    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    except BaseException:
        # Interrupted (Ctrl-C, a timeout): end the progress line so the
        # error is printed on a line of its own.
        if last_draw:
            sys.stderr.write("\n")
            sys.stderr.flush()
        raise
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


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Client of the replicated KV store.")
    parser.add_argument("-f", "--config", required=True, help="cluster config (seed format)")
    parser.add_argument("--timeout", type=bounded_float(0.0, MAX_TIMEOUT), default=10.0,
                        help="seconds per operation")
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
    p = sub.add_parser("transfer-leader",
                       help="make node ID (default: the most up-to-date follower) the leader")
    p.add_argument("id", nargs="?", type=int, default=None, metavar="ID")
    p = sub.add_parser("bench", help="run a load and print ops/s and latency")
    # Bounded: each client is a coroutine and holds a request of
    # --value-size bytes; a typo must not exhaust memory.
    p.add_argument("--clients", type=int_at_most(MAX_CLIENTS), default=64)
    p.add_argument("--ops", type=positive_int, default=10_000)
    p.add_argument("--value-size", type=int_at_most(MAX_VALUE_SIZE), default=100)
    p.add_argument("--keys", type=positive_int, default=1000)
    p.add_argument("--reads", type=float, default=0.0, help="fraction of gets (0..1)")
    args = parser.parse_args(argv)
    if args.command == "bench" and not 0.0 <= args.reads <= 1.0:
        parser.error("--reads must be between 0 and 1")
    for name in ("key", "value"):
        text = getattr(args, name, None)
        if text is not None and not _is_utf8(text):
            # Python hands such bytes over as lone surrogates, which no
            # protobuf string can carry.
            fail(PROG, f"the {name} {text!r} is not valid UTF-8", EXIT_USAGE)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    if args.command == "transfer-leader" and args.id is not None \
            and not 0 <= args.id < len(config):
        fail(PROG, f"node {args.id} is not in {config.path} (ids 0..{len(config) - 1})",
             EXIT_USAGE)

    async def go() -> int:
        if args.command == "status":
            return await _status(config, min(args.timeout, 2.0))
        if args.command == "transfer-leader":
            return await _transfer_leader(config, -1 if args.id is None else args.id,
                                          args.timeout)
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
    except (BadRequest, TooLarge) as exc:  # what was typed can never succeed
        fail(PROG, str(exc), EXIT_USAGE)
    except ClerkError as exc:  # a timeout, a server error
        fail(PROG, f"{config.path}: {exc}")
    except KeyboardInterrupt:
        fail(PROG, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
