"""kvserver under a low open-file limit: idle connections past the cap are
refused, and the storage keeps its descriptors (kvserver/resources.py)."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from clerk import Clerk
from kvserver.launcher import Cluster
from kvserver.resources import raise_open_file_limit
from tests.e2e.harness import poll_until, statuses, wait_leader

pytestmark = pytest.mark.timeout(120)

#: The nodes' hard limit; each starts with a soft limit far below it, which
#: leaves no room for any client connection unless the node raises it.
HARD = 256
SOFT = 64
FLOOD = 300  # idle connections per node: past the cap (about 190) and the limit


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


class LimitedCluster(Cluster):
    """A Cluster whose nodes start under RLIMIT_NOFILE = (SOFT, HARD)."""

    def start_node(self, i: int) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(i), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvserver.main", "--id", str(i),
                 "-f", str(self.config_path), "--data-dir", str(self.data_dir / f"node{i}"),
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_low_limit,
            )
        self.procs[i] = proc
        return proc


@contextmanager
def idle_connections(addresses: list[tuple[str, int]], count: int) -> Iterator[None]:
    """`count` connections to each address, nothing ever sent on them."""
    with ExitStack() as stack:
        for address in addresses:
            for _ in range(count):
                sock = stack.enter_context(socket.socket())
                sock.setblocking(False)
                sock.connect_ex(address)  # EINPROGRESS; the kernel completes it
        yield


def test_idle_connections_past_the_cap_do_not_starve_storage(tmp_path: Path) -> None:
    # The flood holds 3 * FLOOD sockets here: make room for them.
    raise_open_file_limit()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 3 * FLOOD + 200:
        pytest.skip("this process cannot hold the flood's sockets")
    cluster = LimitedCluster(tmp_path / "cluster.conf", 3, tmp_path / "data",
                             ["--max-raft-state", "20000"])
    cluster.start()
    try:
        wait_leader(cluster)
        logs = [cluster.log_path(i) for i in range(3)]
        for path in logs:
            poll_until(lambda p=path: "client connections capped" in p.read_text(), 5.0,
                       "the budget line")
            assert f"soft {SOFT} -> {HARD}" in path.read_text()
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            ck.put("before", "1")  # connected to the leader before the flood
            with idle_connections(cluster.addresses, FLOOD):
                for path in logs:
                    poll_until(lambda p=path: "refusing connections" in p.read_text(), 5.0,
                               "a node to refuse connections over its cap")
                # Writes go on, and grow the log past --max-raft-state: every
                # node snapshots while clients hold all the slots they may.
                for i in range(300):
                    ck.put(f"k{i % 50}", "v" * 100)
                assert ck.get("k49") == b"v" * 100
                assert all(p.poll() is None for p in cluster.procs.values())
        # With the flood gone, the nodes answer a new connection at once.
        poll_until(lambda: all(s is not None and s.snapshot_index > 0 for s in statuses(cluster)),
                   10.0, "every node to have taken a snapshot")
        for i, proc in cluster.procs.items():
            assert proc.poll() is None, cluster.log_path(i).read_text()[-2000:]
            assert "Too many open files" not in cluster.log_path(i).read_text()
    finally:
        cluster.stop()


def test_a_cap_over_the_open_file_limit_is_a_usage_error(tmp_path: Path) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text("node0ip=127.0.0.1\nnode0port=1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kvserver.main", "--id", "0", "-f", str(conf),
         "--data-dir", str(tmp_path / "d"), "--max-client-connections", "1000"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        preexec_fn=_low_limit,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit under the open-file limit 256" in lines[0], lines
