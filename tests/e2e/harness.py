"""Real-process cluster helpers for end-to-end tests: ``kvserver`` processes
started by ``kvserver.launcher.Cluster``, polled through the Status RPC."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kvserver import kv_pb2
from kvserver.launcher import Cluster
from rpc import RpcChannel, RpcError, Stub

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]


async def node_status(host: str, port: int, timeout: float = 0.5) -> kv_pb2.StatusReply | None:
    try:
        async with RpcChannel(host, port, connect_timeout=timeout) as channel:
            reply: kv_pb2.StatusReply = await Stub(channel, KV_SERVICE).Status(
                kv_pb2.StatusRequest(), timeout=timeout)
            return reply
    except RpcError:
        return None


def statuses(cluster: Cluster) -> list[kv_pb2.StatusReply | None]:
    async def all_() -> list[kv_pb2.StatusReply | None]:
        return list(await asyncio.gather(*(node_status(h, p) for h, p in cluster.addresses)))

    return asyncio.run(all_())


def wait_leader(cluster: Cluster, timeout: float = 20.0, exclude: Sequence[int] = ()) -> int:
    """Poll until exactly one live node reports itself leader; its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [s.id for s in statuses(cluster)
                   if s is not None and s.role == "leader" and s.id not in exclude]
        if len(leaders) == 1:
            return leaders[0]
        for i, proc in cluster.procs.items():
            code = proc.poll()
            if code is not None and i not in exclude:
                log = cluster.log_path(i).read_text(errors="replace")[-2000:]
                raise AssertionError(f"node {i} exited with {code}:\n{log}")
        time.sleep(0.05)
    raise AssertionError(f"no single leader within {timeout} s: {statuses(cluster)}")


@contextmanager
def running_cluster(tmp: Path, n: int = 3, extra_args: Sequence[str] = ()) -> Iterator[Cluster]:
    cluster = Cluster(tmp / "cluster.conf", n, tmp / "data", extra_args)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def start_raft_core_run(conf: Path, data_dir: Path, n: int = 3) -> subprocess.Popen[str]:
    """``raftCoreRun -n N -f CONF --data-dir DATA_DIR`` as a process, its
    stdout a text pipe (unbuffered, so lines arrive as it prints them)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kvserver.launcher", "-n", str(n), "-f", str(conf),
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one of the console scripts as a module with this interpreter."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def poll_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a cheap condition until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
