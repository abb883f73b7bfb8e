"""``callerMain member ...`` against real ``kvserver`` processes: list, add a
learner, a promotion refused while it is behind, removal of a learner, a
follower and the leader (the removed processes exit 0 and the cluster keeps
serving), and a client config naming a removed node that still works.

A new node joining as a real process needs ``kvserver --join`` (the
identity work); the join and catch-up path runs in process instead
(tests/kvserver/test_membership_ops.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from kvserver.config import format_config
from kvserver.launcher import Cluster, free_ports
from tests.e2e.harness import (
    poll_until,
    run_cli,
    running_cluster,
    start_raft_core_run,
    wait_leader,
)

pytestmark = pytest.mark.timeout(120)

CALLER = ["-m", "clerk.caller_main"]


def member(conf: Path, *args: str) -> tuple[int, str, str]:
    done = run_cli(*CALLER, "-f", str(conf), "--timeout", "20", "member", *args)
    return done.returncode, done.stdout, done.stderr


def listed(conf: Path) -> dict[int, tuple[str, str]]:
    """``member list`` as {id: (address, role)}."""
    code, out, err = member(conf, "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "ROLE", "MATCH"]
    rows = [line.split() for line in lines[1:]]
    assert all(int(row[3]) > 0 for row in rows if row[2] == "voter"), out
    return {int(row[0]): (row[1], row[2]) for row in rows}


def exits_cleanly(cluster: Cluster, node: int) -> None:
    proc = cluster.procs[node]
    poll_until(lambda: proc.poll() is not None, 20.0, f"removed node {node} to exit")
    log = cluster.log_path(node).read_text(errors="replace")
    assert proc.returncode == 0, log[-2000:]
    assert f"node {node} was removed from the cluster" in log
    assert "Traceback" not in log


def test_member_commands_on_a_real_cluster(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        conf = cluster.config_path
        leader = wait_leader(cluster)
        addresses = {i: f"{h}:{p}" for i, (h, p) in enumerate(cluster.addresses)}
        assert listed(conf) == {i: (a, "voter") for i, a in addresses.items()}

        # Usage errors: exit 2, one line, before anything is sent.
        for args in (["promote", "x"], ["add", "3", "127.0.0.1"], ["add", "3", "h:0"],
                     ["remove"], []):
            code, _, err = member(conf, *args)
            assert code == 2 and len(err.splitlines()) == 1, (args, err)

        # A learner that is not running holds nothing: promotion refused.
        new = f"127.0.0.1:{free_ports(1)[0]}"
        code, out, err = member(conf, "add", "3", new)
        assert code == 0 and out == f"node 3 ({new}) added as a learner\n", err
        assert listed(conf)[3] == (new, "learner")
        code, _, err = member(conf, "promote", "3")
        assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
        assert "learner 3 has 0 of" in err and "90%" in err
        code, _, err = member(conf, "add", "4", addresses[0])
        assert code == 1 and "is node 0's" in err
        # status shows the members the cluster added, not only the config's.
        done = run_cli(*CALLER, "-f", str(conf), "status")
        assert done.returncode == 0, done.stderr
        assert f"node 3 {new} unreachable" in done.stdout, done.stdout
        done = run_cli(*CALLER, "-f", str(conf), "status", "--json")
        rows = {row["id"]: row for row in json.loads(done.stdout)}
        assert done.returncode == 0 and set(rows) == {0, 1, 2, 3}, done.stdout
        assert rows[3]["error"] and rows[leader]["role"] == "leader", rows
        assert all(row["member"] for row in rows.values())
        code, _, err = member(conf, "remove", "3")
        assert code == 0, err
        assert 3 not in listed(conf)

        follower = next(i for i in range(3) if i != leader)
        code, _, err = member(conf, "remove", str(follower))
        assert code == 0, err
        exits_cleanly(cluster, follower)

        # The leader: it hands over, the next one removes it.
        code, _, err = member(conf, "remove", str(leader))
        assert code == 0, err
        exits_cleanly(cluster, leader)
        (last,) = set(range(3)) - {follower, leader}
        assert wait_leader(cluster, exclude=[follower, leader]) == last
        assert listed(conf) == {last: (addresses[last], "voter")}
        done = run_cli(*CALLER, "-f", str(conf), "status")
        assert f"node {follower} {addresses[follower]} unreachable" in done.stdout
        assert "(not a member)" in done.stdout.splitlines()[follower], done.stdout

        # A client config whose first entries are removed (stopped) nodes.
        stale = tmp_path / "stale.conf"
        stale.write_text(format_config([cluster.addresses[leader], cluster.addresses[follower],
                                        cluster.addresses[last]]), encoding="utf-8")
        done = run_cli(*CALLER, "-f", str(stale), "--timeout", "20", "put", "k", "v")
        assert done.returncode == 0, done.stderr
        done = run_cli(*CALLER, "-f", str(stale), "--timeout", "20", "get", "k")
        assert (done.returncode, done.stdout) == (0, "v\n"), done.stderr


def test_raftcorerun_reports_a_removed_node_as_stopped_not_failed(tmp_path: Path) -> None:
    """A node removed with ``member remove`` exits 0; raftCoreRun says so and,
    stopped afterwards, exits 0 (a node that died still makes it exit 1:
    tests/e2e/test_kv_e2e.py)."""
    conf = tmp_path / "c.conf"
    launcher = start_raft_core_run(conf, tmp_path / "data")
    assert launcher.stdout is not None
    try:
        lines = [launcher.stdout.readline() for _ in range(4)]
        assert lines[-1].startswith("config written to"), lines
        code, out, err = member(conf, "remove", "2")
        assert (code, out) == (0, "node 2 removed\n"), err
        line = launcher.stdout.readline()
        assert line.startswith("node 2 (pid ") and "exited with code 0 (stopped: removed" in line
        launcher.send_signal(signal.SIGTERM)
        rest = launcher.communicate(timeout=30)[0]
        assert "cluster stopped" in rest and launcher.returncode == 0, rest
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
