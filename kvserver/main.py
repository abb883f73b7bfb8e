"""``kvserver``: run node I of the cluster described by a config file.

    kvserver --id I -f test.conf [--addr HOST:PORT] [--join] [--data-dir DIR]
             [--max-raft-state BYTES] [--max-key-bytes B] [--max-value-bytes B]
             [--max-request-bytes B] [--max-client-connections N]
             [--idle-timeout SECONDS] [--log-level L]

Recovers from ``--data-dir`` (default ``data/node<I>``) after any crash.
The data dir's IDENTITY file (kvserver/identity.py) says which cluster and
node it belongs to: a data dir of another node, or a config that is
neither its cluster's bootstrap list nor the membership it holds, is
refused. An empty data dir first asks the config's other members who it
is (kvserver/discovery.py): a member they have heard from before lost its
log and vote and is refused with the commands that replace it; a fresh
one bootstraps. With ``--join`` an empty data dir joins a running cluster
as the learner ``callerMain member add`` made it (CONF lists members to
contact; ``--addr`` is this node's address).
Stops cleanly on SIGTERM or SIGINT (exit 0); a leader first hands
leadership to its most up-to-date follower (bounded by an election
timeout). Exit 2 with one line on stderr for a bad command line or config,
a port already in use, or an unusable data dir; exit 1 if the node fails
while running (e.g. its disk).

At start the soft open-file limit is raised to the hard one; client
connections are capped below it, so that storage and Raft peers always find
a descriptor (kvserver/resources.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from kvserver import resources
from kvserver.config import ClusterConfig, ConfigError, NodeAddress, load_config
from kvserver.discovery import settle_identity
from kvserver.identity import (
    IDENTITY_FILE,
    Identity,
    IdentityError,
    check_config,
    cluster_id_of,
    config_membership,
    has_data,
    read_identity,
    write_identity,
)
from kvserver.limits import Limits, LimitsError
from kvserver.server import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_RAFT_STATE,
    KvNode,
    KvNodeOptions,
    collect_old_objects_only_when_told,
)
from raft.membership import parse_address
from raft.storage import StorageError
from rpc.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Parser, byte_size, fail, positive_int
from rpc.loop import run

__all__ = ["main"]

PROG = "kvserver"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _configure_logging(node_id: int, level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s node{node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _check_port(address: NodeAddress) -> None:
    """Exit 2 if this node's address cannot be listened on, before anything
    touches the data dir: a node that cannot serve must not create one. A
    trial listen (closed again at once) rather than handing the socket to
    the provider: SO_REUSEADDR lets the provider bind it right after, and a
    port taken in between is still reported by start() (see _serve)."""
    try:
        with socket.create_server((address.host, address.port)):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fail(PROG, f"{address}: port {address.port} is already in use", EXIT_USAGE)
        fail(PROG, f"{address}: cannot listen: {exc.strerror or exc}", EXIT_USAGE)


async def _serve(node: KvNode) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except OSError as exc:
        await node.stop()
        if exc.errno == errno.EADDRINUSE:
            fail(PROG, f"{node.address}: port {node.address.port} is already in use",
                 EXIT_USAGE)
        fail(PROG, f"{node.address}: cannot listen: {exc.strerror or exc}", EXIT_USAGE)
    waiter = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(node.node.wait_failed())
    # A node whose own removal is committed stops as on SIGTERM (exit 0).
    removed = asyncio.ensure_future(node.removed.wait())
    await asyncio.wait({waiter, failed, removed}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    failed.cancel()
    removed.cancel()
    failure = node.node.failure
    if failure is None:
        # Graceful stop: a leader hands over first, so writes pause for a
        # round trip rather than an election timeout (as with kill -9).
        await node.hand_over_leadership()
    await node.stop()
    if failure is not None:
        fail(PROG, f"node {node.id} stopped: {failure}", EXIT_FAILED)
    logging.getLogger("kvserver").info("node %d shut down cleanly", node.id)
    return EXIT_OK


def _host_port(text: str) -> tuple[str, int]:
    """HOST:PORT (argparse type): ``raft.membership.parse_address``'s rule,
    the one member addresses in the log follow."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(node_id: int, addr: tuple[str, int] | None, identity: Identity | None,
             config: ClusterConfig, join: bool) -> NodeAddress:
    """Where this node listens: --addr, else its config entry, else (a node
    that joined, absent from the config) the address its data dir was
    started with. Raises ConfigError."""
    if addr is not None:
        return NodeAddress(node_id, addr[0], addr[1])
    if node_id not in {n.id for n in config.nodes} and identity is not None:
        try:
            host, port = parse_address(identity.address)
        except ValueError as exc:
            raise ConfigError(f"{IDENTITY_FILE} of node {node_id}: {exc}") from None
        return NodeAddress(node_id, host, port)
    if join and node_id not in {n.id for n in config.nodes}:
        raise ConfigError(f"--join: node {node_id} is not in {config.path}: "
                          f"give its address with --addr HOST:PORT")
    return config.node(node_id)


def _identity(node_id: int, address: NodeAddress, config: ClusterConfig, data_dir: str,
              join: bool) -> Identity:
    """The data dir's identity, written first if it has none: from the
    config for a data dir of the release before identities (a one-time
    upgrade), else as the other members decide (kvserver/discovery.py).
    Raises IdentityError, ConfigError, OSError."""
    log = logging.getLogger("kvserver")
    identity = read_identity(data_dir)
    if identity is not None:
        if identity.node_id != node_id:
            raise IdentityError(
                f"data dir {data_dir} belongs to node {identity.node_id} of cluster "
                f"{identity.cluster_id}, not to node {node_id}")
        return identity
    if has_data(data_dir):
        config.node(node_id)
        bootstrap = config_membership(config)
        identity = Identity(cluster_id_of(bootstrap), node_id, str(address), bootstrap)
        log.info("node %d: data dir %s has no IDENTITY (an earlier release): recording "
                 "cluster %s, bootstrap %s from %s", node_id, data_dir, identity.cluster_id,
                 bootstrap.describe(), config.path)
    else:
        if not join:
            config.node(node_id)
        identity = run(settle_identity(node_id, address, config, join=join))
        identity = dataclasses.replace(identity, address=str(address))
        log.info("node %d: %s cluster %s (bootstrap %s)", node_id,
                 "joining" if join else "bootstrapping", identity.cluster_id,
                 identity.bootstrap.describe() if not identity.joined else "from the leader")
    write_identity(data_dir, identity)
    return identity


def _seconds(text: str) -> float:
    """A duration in seconds, >= 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Run one node of the replicated KV store.")
    parser.add_argument("--id", type=int, required=True, help="this node's id in the config")
    parser.add_argument("-f", "--config", required=True, help="cluster config (seed format)")
    parser.add_argument("--addr", type=_host_port, metavar="HOST:PORT",
                        help="this node's address (default: its entry in the config, or "
                             "the address its data dir was started with)")
    parser.add_argument("--join", action="store_true",
                        help="an empty data dir joins the running cluster whose members "
                             "the config lists, as the learner `member add` made it")
    parser.add_argument("--data-dir", help="where the WAL and snapshots live (data/node<I>)")
    parser.add_argument("--max-raft-state", type=byte_size, default=DEFAULT_MAX_RAFT_STATE,
                        metavar="BYTES",
                        help="compact the log (snapshot file of the store, then the log "
                             "before it dropped) once it holds this many bytes of entries "
                             f"(default {DEFAULT_MAX_RAFT_STATE >> 20}MiB; units: 64MiB, 1GB)")
    parser.add_argument("--max-db-bytes", type=byte_size, default=None, metavar="BYTES",
                        help="refuse writes other than deletes (NO_SPACE) once the store "
                             "uses this many bytes (default: no quota)")
    defaults = Limits()
    parser.add_argument("--max-key-bytes", type=positive_int, default=defaults.max_key_bytes,
                        help="largest key, in bytes (%(default)s)")
    parser.add_argument("--max-value-bytes", type=positive_int,
                        default=defaults.max_value_bytes,
                        help="largest value a PUT or CAS sets or an APPEND leaves (%(default)s)")
    parser.add_argument("--max-request-bytes", type=positive_int, default=0,
                        help="largest request: one write, or a whole Batch (the larger of "
                             "2 MiB and key + value limits); also the bytes of one Scan page")
    parser.add_argument("--max-client-connections", type=positive_int, default=None,
                        metavar="N",
                        help="refuse client connections beyond N (default: as many as fit "
                             "under the open-file limit, after a reserve for storage and peers)")
    parser.add_argument("--idle-timeout", type=_seconds, default=DEFAULT_IDLE_TIMEOUT,
                        metavar="SECONDS",
                        help="close client connections silent this long; 0 = never "
                             f"(default {DEFAULT_IDLE_TIMEOUT:g}; peers are never closed)")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    args = parser.parse_args(argv)
    soft_before, soft_after, hard = resources.raise_open_file_limit()
    try:
        limits = Limits(max_key_bytes=args.max_key_bytes, max_value_bytes=args.max_value_bytes,
                        max_request_bytes=args.max_request_bytes).validate()
    except LimitsError as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    data_dir = args.data_dir or f"data/node{args.id}"
    try:
        config = load_config(args.config)
        address = _address(args.id, args.addr, read_identity(data_dir), config, args.join)
    except (ConfigError, IdentityError) as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    budget = resources.FdBudget(soft_after, resources.fds_in_use(), len(config))
    try:
        max_clients = resources.check_budget(budget, args.max_client_connections)
    except ValueError as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    _check_port(address)
    _configure_logging(args.id, args.log_level)
    try:
        identity = _identity(args.id, address, config, data_dir, args.join)
    except (ConfigError, IdentityError) as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(PROG, f"data dir {data_dir}: {exc.strerror or exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return EXIT_OK
    options = KvNodeOptions(data_dir=data_dir, max_raft_state=args.max_raft_state,
                            max_db_bytes=args.max_db_bytes, limits=limits,
                            max_client_connections=max_clients,
                            idle_timeout=args.idle_timeout or None,
                            membership=identity.bootstrap, cluster_id=identity.cluster_id,
                            address=address)
    collect_old_objects_only_when_told()
    try:
        node = KvNode(config, args.id, options)
    except StorageError as exc:
        # Storage errors name their file or directory already; a prefix only
        # when one does not ("data dir X: data dir X is in use" read badly).
        text = str(exc)
        fail(PROG, text if data_dir in text else f"data dir {data_dir}: {text}", EXIT_USAGE)
    except OSError as exc:
        fail(PROG, f"data dir {data_dir}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        check_config(identity, args.id, config, node.node.membership, data_dir)
    except IdentityError as exc:
        run(node.stop())
        fail(PROG, str(exc), EXIT_USAGE)
    # Logged once the node could be built: a usage error stays one line.
    logging.getLogger("kvserver").info(
        "open-file limit: soft %d -> %d (hard %s); client connections capped at %d "
        "(+%d for peers)", soft_before, soft_after,
        resources.limit_text(hard),
        max_clients, resources.peer_reserve(len(config)))
    try:
        return run(_serve(node))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
