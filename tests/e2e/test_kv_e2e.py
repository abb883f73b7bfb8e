"""The KV store as users run it: real kvserver processes, real files, kill -9."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import pytest

from clerk import AsyncClerk, Clerk
from tests.e2e.harness import (
    poll_until,
    run_cli,
    running_cluster,
    start_raft_core_run,
    statuses,
    wait_leader,
)

pytestmark = pytest.mark.timeout(180)

CALLER = ["-m", "clerk.caller_main"]


def test_put_get_append_delete_through_caller_main_and_clerk(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        conf = str(cluster.config_path)
        wait_leader(cluster)
        assert run_cli(*CALLER, "-f", conf, "put", "k", "v1").returncode == 0
        assert run_cli(*CALLER, "-f", conf, "append", "k", "+2").returncode == 0
        got = run_cli(*CALLER, "-f", conf, "get", "k")
        assert (got.returncode, got.stdout) == (0, "v1+2\n")
        assert run_cli(*CALLER, "-f", conf, "delete", "k").returncode == 0
        got = run_cli(*CALLER, "-f", conf, "get", "k")
        assert (got.returncode, got.stdout) == (0, "\n")  # a missing key reads as ""

        with Clerk.from_config(conf, timeout=10.0) as ck:
            ck.put("a", "1")
            ck.append("a", "2")
            ck.append("new", "x")  # append to a missing key starts from ""
            assert ck.get("a") == b"12"
            assert ck.get("new") == b"x"
            assert ck.get("nope") == b""  # a missing key reads as b""
            assert ck.get("nope", default=None) is None

        # Over a limit: one line naming it, exit 2, no retry loop.
        big = run_cli(*CALLER, "-f", conf, "put", "k" * 512, "v")
        assert big.returncode == 2, big.stderr
        assert big.stderr.count("\n") == 1 and "max_key_bytes=511" in big.stderr

        loop = run_cli(*CALLER, "-f", conf, "--count", "20")
        assert loop.returncode == 0, loop.stderr
        assert loop.stdout.count("get return :{") == 20

        status = run_cli(*CALLER, "-f", conf, "status")
        assert status.returncode == 0
        lines = status.stdout.strip().splitlines()
        assert len(lines) == 3 and sum("leader term" in line for line in lines) == 1


def test_leader_kill9_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = wait_leader(cluster)
        acked: list[str] = []
        stop = threading.Event()

        async def load() -> None:
            async with AsyncClerk(cluster.addresses, timeout=20.0) as ck:
                async def writer(w: int) -> None:
                    i = 0
                    while not stop.is_set():
                        value = f"w{w}-{i};"
                        await ck.append(f"log{w}", value)
                        acked.append(value)
                        i += 1
                await asyncio.gather(*(writer(w) for w in range(8)))

        thread = threading.Thread(target=asyncio.run, args=(load(),))
        thread.start()
        try:
            poll_until(lambda: len(acked) >= 200, 30, "200 acknowledged appends")
            cluster.kill(leader, signal.SIGKILL)
            new_leader = wait_leader(cluster, exclude=[leader])
            assert new_leader != leader
            before = len(acked)
            poll_until(lambda: len(acked) >= before + 200, 30,
                       "200 more appends after the failover")
        finally:
            stop.set()
            thread.join(60)
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            logs = b"".join(ck.get(f"log{w}") for w in range(8)).decode()
        for value in acked:
            assert logs.count(value) == 1, f"acknowledged {value!r} lost or doubled"


def test_kill9_all_nodes_and_restart_keeps_everything(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        wait_leader(cluster)
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            for i in range(100):
                ck.put(f"k{i}", f"v{i}")
            ck.append("acc", "a")
        for i in cluster.procs:
            cluster.kill(i, signal.SIGKILL)
        for i in list(cluster.procs):
            cluster.start_node(i)
        wait_leader(cluster)
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            assert [ck.get(f"k{i}") for i in range(100)] == [b"v%d" % i for i in range(100)]
            assert ck.get("acc") == b"a"


def test_follower_down_past_compaction_catches_up_by_snapshot(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra_args=["--max-raft-state", "20000"]) as cluster:
        leader = wait_leader(cluster)
        lagging = (leader + 1) % 3
        cluster.kill(lagging, signal.SIGKILL)
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            for i in range(400):
                ck.put(f"key{i % 50}", f"value-{i}-" + "x" * 100)
        st = statuses(cluster)
        assert st[leader] is not None and st[leader].first_index > 1, "leader never compacted"
        cluster.start_node(lagging)

        def caught_up() -> bool:
            s = statuses(cluster)
            lead, lag = s[leader], s[lagging]
            return (lead is not None and lag is not None
                    and lag.applied_index >= lead.commit_index and lag.snapshot_index > 0)

        poll_until(caught_up, 30, "the lagging node to catch up by snapshot")


class _ReplyDroppingProxy:
    """Forwards client -> server, but cuts the first connection as soon as the
    server's first reply arrives: the request was applied, the reply lost."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        drop = self.dropped == 0

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       is_reply: bool) -> None:
            while data := await src.read(65536):
                if is_reply and drop:
                    self.dropped += 1
                    break
                dst.write(data)
                await dst.drain()

        try:
            await asyncio.wait(
                [asyncio.ensure_future(pump(reader, up_writer, False)),
                 asyncio.ensure_future(pump(up_reader, writer, True))],
                return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.close()
            up_writer.close()


def test_lost_reply_retry_applies_once(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = wait_leader(cluster)

        async def scenario() -> bytes:
            proxy = _ReplyDroppingProxy(cluster.addresses[leader])
            port = await proxy.start()
            servers = list(cluster.addresses)
            servers[leader] = ("127.0.0.1", port)
            async with AsyncClerk(servers, timeout=20.0) as ck:
                ck._leader = leader  # start at the proxied leader
                await ck.append("once", "x")
                assert proxy.dropped == 1, "the proxy never dropped a reply"
                value = await ck.get("once")
            assert proxy.server is not None
            proxy.server.close()
            return value

        assert asyncio.run(scenario()) == b"x"


def test_bad_configs_and_command_lines_exit_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    cases = {
        "node0ip=127.0.0.1\nnode0port=1\nnode0port=2\n": "duplicate key",
        "node0ip=127.0.0.1\n": "node0port is missing",
        "node0ip=127.0.0.1\nnode0port=1\nnode2ip=127.0.0.1\nnode2port=2\n": "without gaps",
        "node0ip=127.0.0.1\nnode0port=1\nfoo=bar\n": "unknown key",
    }
    for text, fragment in cases.items():
        bad.write_text(text)
        for args in (["-m", "kvserver.main", "--id", "0", "-f", str(bad)],
                     [*CALLER, "-f", str(bad), "get", "k"]):
            result = run_cli(*args)
            assert result.returncode == 2, (args, result.stderr)
            assert fragment in result.stderr and str(bad) in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for args in (["-m", "kvserver.main"], ["-m", "kvserver.main", "--id", "x", "-f", "t"],
                 [*CALLER], [*CALLER, "-f", str(bad), "frobnicate"],
                 [*CALLER, "-f", str(bad), "bench", "--reads", "2"],
                 ["-m", "kvserver.launcher", "-n", "0", "-f", "x"]):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_unreachable_cluster_exits_1(tmp_path: Path) -> None:
    conf = tmp_path / "dead.conf"
    conf.write_text("node0ip=127.0.0.1\nnode0port=9\n")
    result = run_cli(*CALLER, "-f", str(conf), "--timeout", "1", "get", "k")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "timed out" in result.stderr


def test_port_in_use_and_bad_data_dir_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        conf = tmp_path / "one.conf"
        conf.write_text(f"node0ip=127.0.0.1\nnode0port={port}\n")
        result = run_cli("-m", "kvserver.main", "--id", "0", "-f", str(conf),
                         "--data-dir", str(tmp_path / "d"))
        assert result.returncode == 2, result.stderr
        assert "already in use" in result.stderr.strip().splitlines()[-1]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_cli("-m", "kvserver.main", "--id", "0", "-f", str(conf),
                     "--data-dir", str(not_a_dir))
    assert result.returncode == 2
    assert str(not_a_dir) in result.stderr and "Traceback" not in result.stderr


def test_raft_core_run_supervises_reports_deaths_and_leaves_no_orphans(tmp_path: Path) -> None:
    import os

    conf = tmp_path / "run.conf"
    launcher = start_raft_core_run(conf, tmp_path / "data")
    assert launcher.stdout is not None
    pids: dict[int, int] = {}
    try:
        for _ in range(4):
            line = launcher.stdout.readline()
            if line.startswith("node "):
                parts = line.split()
                pids[int(parts[1].rstrip(":"))] = int(parts[parts.index("pid") + 1])
                assert str(tmp_path / "data" / f"node{parts[1].rstrip(':')}.log") in line
        assert sorted(pids) == [0, 1, 2]
        assert conf.read_text().count("port=") == 3
        with Clerk.from_config(conf, timeout=20.0) as ck:
            ck.put("a", "b")
        os.kill(pids[1], signal.SIGKILL)
        line = launcher.stdout.readline()
        assert line.startswith(f"node 1 (pid {pids[1]}) exited with code -9"), line
        launcher.send_signal(signal.SIGTERM)
        rest = launcher.communicate(timeout=30)[0]
        assert "cluster stopped" in rest
        assert launcher.returncode == 1  # a node died while it ran: reported, not hidden
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sigterm_and_sigint_stop_a_node_cleanly(tmp_path: Path) -> None:
    import subprocess
    import sys

    from kvserver.launcher import free_ports

    for sig in (signal.SIGTERM, signal.SIGINT):
        conf = tmp_path / "one.conf"
        conf.write_text(f"node0ip=127.0.0.1\nnode0port={free_ports(1)[0]}\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvserver.main", "--id", "0", "-f", str(conf),
             "--data-dir", str(tmp_path / f"d{sig}")],
            stderr=subprocess.PIPE, text=True)
        try:
            with Clerk.from_config(conf, timeout=20.0) as ck:  # a 1-node cluster serves
                ck.put("k", "v")
                assert ck.get("k") == b"v"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "shut down cleanly" in err and "Traceback" not in err
