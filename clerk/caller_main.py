r"""``callerMain``: the command-line client of the KV store.

    callerMain -f test.conf                      the seed's loop: put x=i, get x, print
    callerMain -f test.conf get K                prints the value alone
    callerMain -f test.conf put K V | append K V | delete K
    callerMain -f test.conf scan PREFIX [--limit N]
                                                 one "KEY VALUE" line per pair, in key order
    callerMain -f test.conf status [--json]      one line per node
    callerMain -f test.conf transfer-leader [ID] make node ID (default: the most
                                                 up-to-date follower) the leader;
                                                 prints the new leader's id
    callerMain -f test.conf bench [--clients N] [--ops N] [--value-size B] [--keys K] [--reads F]
    callerMain -f test.conf member list          one line per member: id, address,
                                                 voter/learner, match index (the leader's)
    callerMain -f test.conf member add ID HOST:PORT
                                                 add node ID as a learner (it gets the log
                                                 but does not vote)
    callerMain -f test.conf member promote ID    make learner ID a voter (refused until it
                                                 has 90% of the leader's log)
    callerMain -f test.conf member remove ID     remove node ID (the leader too: it hands
                                                 over first); the node stops

Keys and values are bytes. By default they are text: a command-line
argument is taken as the bytes the shell passed (UTF-8 text in a UTF-8
terminal; other bytes as they are), and a key or value is printed as
UTF-8 text with Python-style escapes for what is not printable text:
``\\`` for a backslash, ``\n``, ``\r``, ``\t``, ``\xNN`` for a byte that
is not part of valid UTF-8 or an ASCII control character, ``\uNNNN`` for
another unprintable character, and, in scan lines, ``\x20`` for a space
in a key (so a line splits at its first space). So every value prints on
one line and can be told apart from every other. With ``--hex`` (before or
after the command), keys, values and the prefix on the command line are
hex (``00ff``) and keys and values are printed as hex: exact for any bytes.

The config file is where a client starts: it asks the nodes it lists
for the current membership and uses that (clerk discovery), so a config
that names removed nodes works while one listed member is reachable.

Exit 0 on success, 1 when the operation failed (timeout, unreachable
cluster, a transfer that did not finish, a wrong value in the loop, a
membership change the cluster refused), 2 on bad usage or config (an ID
not in the config, an argument that is not hex with ``--hex``, an ID or
HOST:PORT that is not one). Always one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Sequence

from clerk.client import AsyncClerk, BadRequest, ClerkError, Member, TooLarge, prefix_end
from kvserver import kv_pb2
from kvserver.config import ClusterConfig, ConfigError, load_config
from raft.membership import parse_address
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

__all__ = ["main", "show_text"]

PROG = "callerMain"
MAX_TIMEOUT = 86_400.0
MAX_CLIENTS = 10_000
MAX_VALUE_SIZE = 4 << 20
#: Pairs a scan asks for per page (the server may send fewer).
SCAN_PAGE = 1000

#: Escapes of the characters ``show_text`` does not print as they are.
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def show_text(data: bytes, *, escape_space: bool = False) -> str:
    r"""``data`` as one line of text: UTF-8, with Python-style escapes for
    a backslash, newline, carriage return and tab, ``\xNN`` for a byte
    that is not part of valid UTF-8 (always 0x80 or above) or an ASCII
    control character, ``\uNNNN``/``\UNNNNNNNN`` for other unprintable
    characters, and ``\x20`` for a space when ``escape_space``. Text
    without any of these prints unchanged; different bytes never print
    the same."""
    text = data.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text and not (escape_space and " " in text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == " ":
            out.append("\\x20" if escape_space else ch)
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _emit(line: str) -> None:
    """Print one line as UTF-8, whatever the locale's encoding."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        print(line)
        return
    sys.stdout.flush()
    buffer.write(line.encode("utf-8") + b"\n")
    buffer.flush()


async def _loop(ck: AsyncClerk, count: int) -> int:
    # The seed's workload: count down, put x=i then read it back.
    for i in range(count - 1, -1, -1):
        await ck.put("x", str(i))
        value = await ck.get("x")
        print(f"get return :{{{show_text(value)}}}", flush=True)
        if value != str(i).encode():
            fail(PROG, f"get x returned {value!r}, expected {str(i).encode()!r}")
    return EXIT_OK


async def _scan(ck: AsyncClerk, prefix: bytes, limit: int | None, hex_mode: bool) -> int:
    """Print the pairs under ``prefix`` a page at a time (a huge range is
    never held in memory at once)."""
    cursor: bytes | None = prefix
    end = prefix_end(prefix)
    left = limit
    while cursor is not None and (left is None or left > 0):
        page = await ck.scan(cursor, end, min(SCAN_PAGE, left or SCAN_PAGE))
        for key, value in page:
            _emit(f"{key.hex()} {value.hex()}" if hex_mode
                  else f"{show_text(key, escape_space=True)} {show_text(value)}")
        if left is not None:
            left -= len(page)
        cursor = page.next_start
    return EXIT_OK


async def _status(config: ClusterConfig, timeout: float, *, as_json: bool = False) -> int:
    """One line per node: the config's nodes, then the members the cluster
    added since (their addresses from the membership in the log, asked of
    every node that answers); a config node the membership no longer holds
    is marked so."""
    service = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]

    async def one(host: str, port: int) -> tuple[kv_pb2.StatusReply | str,
                                                 kv_pb2.MembershipReply | None]:
        async with RpcChannel(host, port, connect_timeout=timeout) as channel:
            stub = Stub(channel, service)
            try:
                reply: kv_pb2.StatusReply = await stub.Status(
                    kv_pb2.StatusRequest(), timeout=timeout
                )
            except RpcError as exc:
                return exc.status.name.lower(), None
            try:
                members: kv_pb2.MembershipReply = await stub.Membership(
                    kv_pb2.MembershipRequest(), timeout=timeout)
            except RpcError:
                return reply, None
            return reply, members if members.err == kv_pb2.OK else None

    nodes: list[tuple[int, str, str, int]] = [(n.id, str(n), n.host, n.port)
                                              for n in config.nodes]
    answers = await asyncio.gather(*(one(host, port) for _, _, host, port in nodes))
    known = [m for _, m in answers if m is not None and m.members]
    membership = max(known, key=lambda m: m.commit_index) if known else None
    members = {m.id: m.address for m in membership.members} if membership else {}
    added = [(n, a) for n, a in sorted(members.items()) if n not in {i for i, *_ in nodes}]
    for n, address in added:
        try:
            host, port = parse_address(address)
        except ValueError:
            continue
        nodes.append((n, address, host, port))
        answers.append(await one(host, port))
    reachable = sum(1 for reply, _ in answers if not isinstance(reply, str))
    if as_json:
        rows = []
        for (node_id, address, _, _), (reply, _) in zip(nodes, answers, strict=True):
            row: dict[str, object] = {"id": node_id, "address": address,
                                      "member": not members or node_id in members}
            if isinstance(reply, str):
                row["error"] = reply
            else:
                row.update(role=reply.role, term=reply.term, leader=reply.leader,
                           commit_index=reply.commit_index, applied_index=reply.applied_index,
                           first_index=reply.first_index, last_index=reply.last_index,
                           snapshot_index=reply.snapshot_index, keys=reply.keys)
            rows.append(row)
        print(json.dumps(rows, indent=1))
        return EXIT_OK if reachable else EXIT_FAILED
    for (node_id, address, _, _), (reply, _) in zip(nodes, answers, strict=True):
        gone = " (not a member)" if members and node_id not in members else ""
        if isinstance(reply, str):
            print(f"node {node_id} {address} unreachable ({reply}){gone}")
            continue
        leader = reply.leader if reply.leader >= 0 else "none"
        print(
            f"node {node_id} {address} {reply.role} term {reply.term} leader {leader} "
            f"commit {reply.commit_index} applied {reply.applied_index} "
            f"log {reply.first_index}..{reply.last_index} keys {reply.keys}{gone}"
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


def _node_id(text: str) -> int:
    """argparse type: a node id (an integer >= 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"node id {text!r} is not a number") from None
    if value < 0 or value >= 1 << 31:
        raise argparse.ArgumentTypeError(f"node id {value} is not 0..{(1 << 31) - 1}")
    return value


def _member_address(text: str) -> str:
    """argparse type: a member's HOST:PORT, as given."""
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _print_members(members: list[Member]) -> None:
    width = max([len("ADDRESS"), *(len(m.address) for m in members)])
    print(f"{'ID':>4}  {'ADDRESS':<{width}}  {'ROLE':<7}  MATCH")
    for m in members:
        print(f"{m.id:>4}  {m.address:<{width}}  {m.role:<7}  {m.match_index}")


async def _member(ck: AsyncClerk, args: argparse.Namespace) -> int:
    """``member list|add|promote|remove``: a refusal is one line, exit 1."""
    what = args.member_command
    try:
        if what == "list":
            _print_members(await ck.member_list())
        elif what == "add":
            await ck.member_add(args.id, args.address)
            print(f"node {args.id} ({args.address}) added as a learner")
        elif what == "promote":
            await ck.member_promote(args.id)
            print(f"node {args.id} is a voter")
        else:
            await ck.member_remove(args.id)
            print(f"node {args.id} removed")
    except BadRequest as exc:
        refused = f"member {what}" + ("" if what == "list" else f" {args.id}")
        fail(PROG, f"{refused} refused: {str(exc).removeprefix('ChangeMembership refused: ')}")
    return EXIT_OK


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


def _argument_bytes(text: str, name: str, hex_mode: bool) -> bytes:
    """A key, value or prefix from the command line as bytes: hex with
    ``--hex``, else the bytes the shell passed (Python decoded them with
    the file system encoding, undecodable bytes as surrogates)."""
    if not hex_mode:
        return os.fsencode(text)
    try:
        return bytes.fromhex(text)
    except ValueError:
        fail(PROG, f"the {name} {text!r} is not hex (--hex: two hex digits a byte, "
             f"like 00ff)", EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog=PROG, description="Client of the replicated KV store.",
        epilog="Keys and values are bytes. By default arguments are text (the bytes the "
               "shell passed, UTF-8 in a UTF-8 terminal) and output is UTF-8 text with "
               "Python-style escapes (\\\\, \\n, \\t, \\xNN for bytes that are not UTF-8 "
               "and control characters, \\uNNNN; in scan lines \\x20 for a space in a key). "
               "With --hex, keys, values and prefixes on the command line are hex (00ff) "
               "and printed as hex.")
    parser.add_argument("-f", "--config", required=True, help="cluster config (seed format)")
    parser.add_argument("--hex", action="store_true",
                        help="keys, values and prefixes in arguments and output are hex")
    parser.add_argument("--timeout", type=bounded_float(0.0, MAX_TIMEOUT), default=10.0,
                        help="seconds per operation")
    parser.add_argument("--count", type=positive_int, default=500,
                        help="iterations of the default loop")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    hex_help = "as --hex before the command"
    p = sub.add_parser("get", help="print the value of KEY (a missing key prints an empty line)")
    p.add_argument("key")
    p.add_argument("--hex", action="store_true", default=argparse.SUPPRESS, help=hex_help)
    p = sub.add_parser("put", help="set KEY to VALUE")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--hex", action="store_true", default=argparse.SUPPRESS, help=hex_help)
    p = sub.add_parser("append", help="append VALUE to KEY")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--hex", action="store_true", default=argparse.SUPPRESS, help=hex_help)
    p = sub.add_parser("delete", help="remove KEY")
    p.add_argument("key")
    p.add_argument("--hex", action="store_true", default=argparse.SUPPRESS, help=hex_help)
    p = sub.add_parser("scan", help='print "KEY VALUE" for each key that starts with PREFIX, '
                                    'in key order (PREFIX "": every key)')
    p.add_argument("prefix")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="at most N pairs (default: all)")
    p.add_argument("--hex", action="store_true", default=argparse.SUPPRESS, help=hex_help)
    p = sub.add_parser("status", help="one line per node: role, term, leader, indexes")
    p.add_argument("--json", action="store_true",
                   help="a JSON array, one object per node (an unreachable one has \"error\")")
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
    p = sub.add_parser("member", help="list or change the cluster's members (one at a time)")
    member = p.add_subparsers(dest="member_command", parser_class=Parser, required=True,
                              metavar="{list,add,promote,remove}")
    member.add_parser("list", help="id, address, voter/learner and match index of each "
                                   "member (the leader's view)")
    p = member.add_parser("add", help="add node ID at HOST:PORT as a learner (start it "
                                      "with kvserver --join)")
    p.add_argument("id", type=_node_id, metavar="ID")
    p.add_argument("address", type=_member_address, metavar="HOST:PORT")
    p = member.add_parser("promote", help="make learner ID a voter (refused until it has "
                                          "90%% of the leader's log)")
    p.add_argument("id", type=_node_id, metavar="ID")
    p = member.add_parser("remove", help="remove node ID (voter or learner); it stops")
    p.add_argument("id", type=_node_id, metavar="ID")
    args = parser.parse_args(argv)
    if args.command == "bench" and not 0.0 <= args.reads <= 1.0:
        parser.error("--reads must be between 0 and 1")
    data = {name: _argument_bytes(getattr(args, name), name, args.hex)
            for name in ("key", "value", "prefix") if getattr(args, name, None) is not None}
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
            return await _status(config, min(args.timeout, 2.0), as_json=args.json)
        if args.command == "transfer-leader":
            return await _transfer_leader(config, -1 if args.id is None else args.id,
                                          args.timeout)
        async with AsyncClerk(config.addresses, timeout=args.timeout) as ck:
            if args.command is None:
                return await _loop(ck, args.count)
            if args.command == "get":
                value = await ck.get(data["key"])
                _emit(value.hex() if args.hex else show_text(value))
            elif args.command == "put":
                await ck.put(data["key"], data["value"])
            elif args.command == "append":
                await ck.append(data["key"], data["value"])
            elif args.command == "delete":
                await ck.delete(data["key"])
            elif args.command == "scan":
                return await _scan(ck, data["prefix"], args.limit, args.hex)
            elif args.command == "bench":
                return await _bench(ck, args.clients, args.ops, args.value_size, args.keys,
                                    args.reads)
            elif args.command == "member":
                return await _member(ck, args)
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
