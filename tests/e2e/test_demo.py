"""``make demo`` (kvserver/demo.py) end to end: it exits 0, the leader
failover and the replacement of a dead follower both happen, the workload
sees no error, and no process it started is left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its parent (the demo) is gone, so
    # init reaps it: not running any more either way.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_replaces_a_dead_node_and_stops_everything() -> None:
    done = subprocess.run([sys.executable, "-m", "kvserver.demo"], capture_output=True,
                          text=True, timeout=170)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "took over" in out and "get x -> '0'" in out
    removed = re.search(r"kill -9 follower node (\d+)", out)
    assert removed, out
    assert f"node {removed.group(1)} removed" in out
    added = re.search(r"node (\d+) \(127\.0\.0\.1:\d+\) added as a learner", out)
    assert added, out
    new = added.group(1)
    assert f"node {new} is a voter" in out
    # The last member list: the new node a voter, the removed one gone.
    last_list = out[out.rindex("ID  ADDRESS"):].splitlines()[1:4]
    roles = {line.split()[0]: line.split()[2] for line in last_list}
    assert roles.get(new) == "voter" and removed.group(1) not in roles, out
    assert re.search(r"==> workload: [1-9]\d* ops in .* errors 0\n", out), out
    pids = {int(p) for p in re.findall(r"pid (\d+)", out)}
    assert len(pids) >= 5, out  # 3 by raftCoreRun, the restarted node, the new one
    assert not [p for p in pids if _alive(p)], out
