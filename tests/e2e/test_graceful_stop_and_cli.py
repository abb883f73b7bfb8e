"""Graceful stop (a leader hands over before exiting), raftCoreRun's nodes
dying with it, ``callerMain transfer-leader``, and command lines that
never print a traceback: real processes on 127.0.0.1."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clerk import Clerk
from kvserver.launcher import Cluster
from tests.e2e.harness import poll_until, run_cli, running_cluster, statuses, wait_leader

pytestmark = pytest.mark.timeout(120)

CALLER = ["-m", "clerk.caller_main"]


def one_error_line(stderr: str, prog: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: ") or lines[0].startswith(f"{prog} "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def term_of(cluster: Cluster, node: int) -> int:
    st = statuses(cluster)[node]
    assert st is not None
    return st.term


def test_sigterm_leader_hands_over_to_a_follower_and_exits_0(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            ck.put("k", "v")
        leader = wait_leader(cluster)
        term = term_of(cluster, leader)
        cluster.procs[leader].send_signal(signal.SIGTERM)
        assert cluster.procs[leader].wait(20) == 0
        log = cluster.log_path(leader).read_text(errors="replace")
        handed = [line for line in log.splitlines() if "handed leadership to node" in line]
        assert handed, log[-2000:]
        new = int(handed[0].split("handed leadership to node ")[1].split()[0])
        assert new != leader
        # The target won the election TIMEOUT_NOW started: the very next
        # term, with no election timeout in between (a timeout-driven
        # election would not start before the old leader's lease ran out).
        assert wait_leader(cluster, exclude=[leader]) == new
        assert term_of(cluster, new) == term + 1
        assert "shut down cleanly" in log and "Traceback" not in log
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            assert ck.get("k") == b"v"


def _launcher_pids(launcher: subprocess.Popen[str], n: int) -> list[int]:
    assert launcher.stdout is not None
    pids = []
    while len(pids) < n:
        line = launcher.stdout.readline()
        assert line, "raftCoreRun exited early"
        if line.startswith("node "):
            parts = line.split()
            pids.append(int(parts[parts.index("pid") + 1]))
    return pids


def _gone(pid: int) -> bool:
    # A zombie (exited, not yet reaped by whoever adopted it) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_raft_core_run_sigkilled_takes_its_nodes_along(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "kvserver.launcher", "-n", "3", "-f", str(tmp_path / "c.conf"),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pids: list[int] = []
    try:
        pids = _launcher_pids(launcher, 3)
        with Clerk.from_config(tmp_path / "c.conf", timeout=20.0) as ck:
            ck.put("k", "v")  # the nodes are up (else they may never arm the signal)
        launcher.kill()
        launcher.wait(10)
        poll_until(lambda: all(_gone(p) for p in pids), 10.0, "the nodes to exit")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        assert launcher.stdout is not None
        launcher.stdout.close()
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    # They stopped on SIGTERM, cleanly, not killed.
    for i in range(3):
        log = (tmp_path / "data" / f"node{i}.log").read_text(errors="replace")
        assert "shut down cleanly" in log, log[-2000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cli")) as c:
        wait_leader(c)
        yield c


def test_caller_main_transfer_leader(cluster: Cluster) -> None:
    conf = str(cluster.config_path)
    leader = wait_leader(cluster)
    target = (leader + 1) % 3
    done = run_cli(*CALLER, "-f", conf, "transfer-leader", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert wait_leader(cluster) == target
    # No ID: the most up-to-date follower, whichever it is.
    done = run_cli(*CALLER, "-f", conf, "transfer-leader")
    assert done.returncode == 0, done.stderr
    new = int(done.stdout.strip())
    assert new != target and wait_leader(cluster) == new
    # Asking for the current leader: nothing to do, still success.
    done = run_cli(*CALLER, "-f", conf, "transfer-leader", str(new))
    assert done.returncode == 0 and done.stdout.strip() == str(new), done.stderr
    for bad in ("3", "-1", "x", "99999999999999999999999"):
        done = run_cli(*CALLER, "-f", conf, "transfer-leader", bad)
        assert done.returncode == 2, (bad, done.stderr)
        one_error_line(done.stderr, "callerMain")


def test_caller_main_transfer_leader_unreachable_exits_1(tmp_path: Path) -> None:
    conf = tmp_path / "dead.conf"
    conf.write_text(f"node0ip=127.0.0.1\nnode0port={_dead_port()}\n")
    done = run_cli(*CALLER, "-f", str(conf), "--timeout", "1", "transfer-leader")
    assert done.returncode == 1
    assert "timed out" in one_error_line(done.stderr, "callerMain")


def test_interrupted_bench_ends_its_progress_line(cluster: Cluster) -> None:
    proc = subprocess.Popen(
        [sys.executable, *CALLER, "-f", str(cluster.config_path), "bench", "--ops", "10000000",
         "--clients", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stderr is not None
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        assert sel.select(30), "no progress bar"
        sel.close()
        first = os.read(proc.stderr.fileno(), 4096)
        assert first.startswith(b"\r["), first
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=20)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    err = (first + rest).decode()
    assert "Traceback" not in err
    assert err.endswith("\ncallerMain: error: interrupted\n"), repr(err[-200:])


def test_caller_main_refuses_arguments_that_are_not_hex_with_hex(tmp_path: Path) -> None:
    # (Without --hex any argument goes: non-UTF-8 bytes are taken as they
    # are, tests/e2e/test_bytes_scan_cas_e2e.py.)
    conf = tmp_path / "dead.conf"
    conf.write_text("node0ip=127.0.0.1\nnode0port=9\n")
    for args in (["--hex", "put", "zz", "00"], ["put", "--hex", "00", "0"],
                 ["get", "abc", "--hex"], ["--hex", "scan", "\udcff"]):
        done = subprocess.run([sys.executable, *CALLER, "-f", str(conf), *args],
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr.decode(), "callerMain")
        assert "is not hex" in line, line


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_taken_port_leaves_no_data_dir(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        conf = tmp_path / "one.conf"
        conf.write_text(f"node0ip=127.0.0.1\nnode0port={s.getsockname()[1]}\n")
        data = tmp_path / "d"
        done = run_cli("-m", "kvserver.main", "--id", "0", "-f", str(conf),
                       "--data-dir", str(data))
    assert done.returncode == 2
    assert "already in use" in one_error_line(done.stderr, "kvserver")
    assert not data.exists()


# Argument inputs found crashing (or worth pinning): each must exit with
# `code` and one line on stderr, never a traceback. {d}: a directory,
# {dead}: a config whose one node nobody serves, {long}: a config with a
# host name the resolver cannot encode, {bin}: a binary file.
BAD_INPUTS = [
    (["-m", "kvserver.main", "--id", "99999999999999999999", "-f", "{dead}"], 2),
    (["-m", "kvserver.main", "--id", "-1", "-f", "{dead}"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{d}"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{d}/missing"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{bin}"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "\udcff"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{long}"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{dead}", "--data-dir", "{bin}"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{dead}", "--addr", "1.2.3.4"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{dead}", "--addr", "::1:80"], 2),
    (["-m", "kvserver.main", "--id", "0", "-f", "{dead}", "--addr", "h:70000"], 2),
    (["-m", "kvserver.launcher", "-n", "99999999999", "-f", "{d}/x.conf"], 2),
    (["-m", "kvserver.launcher", "-n", "-3", "-f", "{d}/x.conf"], 2),
    (["-m", "kvserver.launcher", "-n", "3", "-f", "{d}", "--data-dir", "{d}/data"], 2),
    (["-m", "kvserver.launcher", "-n", "1", "-f", "{bin}", "--keep-config"], 2),
    (["-m", "kvserver.launcher", "-n", "1", "-f", "{dead}", "--keep-config",
      "--data-dir", "{bin}"], 2),
    ([*CALLER, "-f", "{d}", "get", "k"], 2),
    ([*CALLER, "-f", "{bin}", "get", "k"], 2),
    ([*CALLER, "-f", "{long}", "--timeout", "1", "get", "k"], 2),
    ([*CALLER, "-f", "{long}", "status"], 2),
    ([*CALLER, "-f", "{dead}", "--timeout", "inf", "get", "k"], 2),
    ([*CALLER, "-f", "{dead}", "--timeout", "nan", "get", "k"], 2),
    ([*CALLER, "-f", "{dead}", "--timeout", "1e300", "get", "k"], 2),
    ([*CALLER, "-f", "{dead}", "bench", "--value-size", "99999999999999"], 2),
    ([*CALLER, "-f", "{dead}", "bench", "--clients", "99999999999999"], 2),
    ([*CALLER, "-f", "{dead}", "--timeout", "0.5", "bench", "--keys", "9" * 30, "--ops", "1"],
     1),
    (["-m", "examples.provider", "--host", "a" * 70], 2),
    (["-m", "examples.provider", "--host", "\udcff"], 2),
    (["-m", "examples.provider", "--port", "99999999999"], 2),
    (["-m", "examples.consumer", "--host", "\udcff", "--port", "9"], 2),
    (["-m", "examples.consumer", "--userid", "99999999999999999999", "--port", "9"], 2),
    (["-m", "examples.consumer", "--userid", "-1", "--port", "9"], 2),
    (["-m", "kvserver.child"], 2),
]


@pytest.mark.parametrize(("args", "code"), BAD_INPUTS,
                         ids=[" ".join(a[1:4]) + f"..{i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_no_traceback_for_bad_arguments(tmp_path: Path, args: list[str], code: int) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    dead = tmp_path / "dead.conf"
    dead.write_text(f"node0ip=127.0.0.1\nnode0port={_dead_port()}\n")
    long = tmp_path / "long.conf"
    long.write_text(f"node0ip={'a' * 70}\nnode0port=9\n")
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe\x00")
    argv = [a.format(d=d, dead=dead, long=long, bin=binary) for a in args]
    done = subprocess.run([sys.executable, *argv], capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
