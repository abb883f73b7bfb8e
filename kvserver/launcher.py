"""``raftCoreRun``: start a whole cluster on this machine, like the seed's launcher.

    raftCoreRun -n N -f test.conf [--data-dir DIR] [--max-raft-state BYTES] [--keep-config]

Picks N free ports on 127.0.0.1, writes the config file (with
``--keep-config``: uses the addresses already in it), starts N
``kvserver`` processes (logs in DIR/node<I>.log), prints each node's address,
pid and log file, and stays in the foreground supervising them. A node that
exits is reported with its exit code and log file; the launcher exits 1
at the end if any node exited non-zero (a node exits 0 only when removed
from the cluster or stopped by a signal). On Ctrl-C or SIGTERM it
stops them all (SIGTERM, then SIGKILL after a grace period) and leaves no
process behind.

The nodes die with the launcher however it dies, SIGKILL included, which
no handler of ours can see: each node is started through
``kvserver.child``, which asks Linux for a parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGTERM)``) before running ``kvserver.main`` in
the same process. The kernel sends it when the launcher exits, for any
reason. It is SIGTERM, not SIGKILL, so each node shuts down as on any
graceful stop (a leader hands over its leadership, the WAL is closed). The
child compares ``getppid()`` with the launcher's pid after arming it: if
the launcher died between the fork and the ``prctl``, nobody would signal
the child, so it exits at once. A wrapper module rather than a
``preexec_fn``: code between fork and exec is unsafe in a process with
threads (tests use ``Cluster`` from threaded programs) and disables the
fast spawn path. The nodes stay in the launcher's process group, so a
Ctrl-C in the terminal reaches them as well (they stop cleanly on SIGINT).
The signal is sent when the thread that started the node exits: start
nodes from the main thread, as ``main`` does.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kvserver.config import ConfigError, format_config, load_config
from rpc.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    byte_size,
    fail,
    int_at_most,
)

__all__ = ["Cluster", "free_ports", "main"]

PROG = "raftCoreRun"
STOP_GRACE = 5.0
MAX_NODES = 100


def _ephemeral_range() -> tuple[int, int] | None:
    """The kernel's range for outgoing connections' local ports (Linux)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return lo, hi


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """N distinct ports free right now, for servers that bind them later.

    Chosen below the kernel's ephemeral range where it is known: a port the
    kernel hands out for ``bind(0)`` can be taken meanwhile as the local port
    of any outgoing connection (a node's peers, a proxy, a client), and then
    the server cannot bind it. Below that range only another listener could
    take it."""
    ephemeral = _ephemeral_range()
    low = 10_000
    if ephemeral is None or ephemeral[0] - low < 100 * n:
        return _kernel_ports(n, host)
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(50 * n):
        port = rng.randrange(low, ephemeral[0])
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    return _kernel_ports(n, host)


def _kernel_ports(n: int, host: str) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """N kvserver processes started from one config; used by tests too."""

    def __init__(self, config_path: str | Path, n: int, data_dir: str | Path,
                 extra_args: Sequence[str] = ()) -> None:
        self.config_path = Path(config_path)
        self.n = n
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.addresses: list[tuple[str, int]] = []

    def write_config(self) -> None:
        self.addresses = [("127.0.0.1", p) for p in free_ports(self.n)]
        self.config_path.write_text(format_config(self.addresses), encoding="utf-8")

    def read_config(self) -> None:
        """Use the config file as it is (raises ConfigError)."""
        config = load_config(self.config_path)
        if len(config) != self.n:
            raise ConfigError(f"{self.config_path}: has {len(config)} nodes, -n says {self.n}")
        self.addresses = config.addresses

    def log_path(self, i: int) -> Path:
        return self.data_dir / f"node{i}.log"

    def start_node(self, i: int) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(i), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvserver.child", str(os.getpid()), "--id", str(i),
                 "-f", str(self.config_path), "--data-dir", str(self.data_dir / f"node{i}"),
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self.procs[i] = proc
        return proc

    def start(self) -> None:
        self.write_config()
        for i in range(self.n):
            self.start_node(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        if proc.poll() is None:
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait()

    def stop(self, grace: float = STOP_GRACE) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Start an N-node KV cluster on 127.0.0.1.")
    # Bounded: each node is a process and a port; -n 10**9 must not fork-bomb.
    parser.add_argument("-n", type=int_at_most(MAX_NODES), required=True,
                        help=f"number of nodes (at most {MAX_NODES})")
    parser.add_argument("-f", "--config", required=True, help="config file to write")
    parser.add_argument("--data-dir", default="data", help="data and logs (data)")
    parser.add_argument("--max-raft-state", type=byte_size, default=None)
    parser.add_argument("--keep-config", action="store_true",
                        help="use the addresses in the existing config instead of free ports")
    args = parser.parse_args(argv)
    extra = ["--max-raft-state", str(args.max_raft_state)] if args.max_raft_state else []
    cluster = Cluster(args.config, args.n, args.data_dir, extra)
    try:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        if args.keep_config:
            cluster.read_config()
        else:
            cluster.write_config()
    except ConfigError as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(PROG, f"{exc.filename or args.config}: {exc.strerror or exc}", EXIT_USAGE)

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(args.n):
        try:
            proc = cluster.start_node(i)
        except OSError as exc:
            cluster.stop()
            fail(PROG, f"cannot start kvserver: {exc.strerror or exc}", EXIT_FAILED)
        host, port = cluster.addresses[i]
        print(f"node {i}: {host}:{port} pid {proc.pid} log {cluster.log_path(i)}", flush=True)
    what = "config" if args.keep_config else "config written to"
    print(f"{what} {args.config}; Ctrl-C stops the cluster", flush=True)

    reported: set[int] = set()
    failed: set[int] = set()
    try:
        while not stopping:
            for i, proc in cluster.procs.items():
                code = proc.poll()
                if code is not None and i not in reported:
                    reported.add(i)
                    # A node exits 0 only when it stopped on purpose: it was
                    # removed from the cluster (`member remove`), or someone
                    # sent it SIGTERM/SIGINT. Neither is a failure to report
                    # in the launcher's exit code.
                    why = " (stopped: removed from the cluster, or by a signal)" if code == 0 \
                        else ""
                    if code != 0:
                        failed.add(i)
                    print(f"node {i} (pid {proc.pid}) exited with code {code}{why}; "
                          f"see {cluster.log_path(i)}", flush=True)
            if len(reported) == args.n:
                print("all nodes have exited", flush=True)
                return EXIT_FAILED if failed else EXIT_OK
            time.sleep(0.2)
    finally:
        cluster.stop()
    print("cluster stopped", flush=True)
    return EXIT_OK if not failed else EXIT_FAILED


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
