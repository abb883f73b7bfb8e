"""``make demo``: a real 3-node cluster, a workload, a leader killed mid-way.

Everything runs as separate processes through the console scripts a user
would type: ``raftCoreRun`` starts the cluster, ``callerMain`` runs the seed's
put/get loop (and checks every value it reads), and the demo kills the leader
with SIGKILL half-way through, shows the new leader taking over, waits for
the workload to finish, and stops the cluster. Bounded in time; exit 0 only
if every value was correct.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
ITERATIONS = 300
KILL_AFTER = 100
TIMEOUT = 120.0


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def caller(conf: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "clerk.caller_main", "-f", str(conf), *args],
                          capture_output=True, text=True, timeout=timeout)


def leader_of(conf: Path) -> int | None:
    out = caller(conf, "status").stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[3] == "leader":
            return int(parts[1])
    return None


def wait_leader(conf: Path, deadline: float, not_id: int | None = None) -> int:
    while time.monotonic() < deadline:
        leader = leader_of(conf)
        if leader is not None and leader != not_id:
            return leader
        time.sleep(0.1)
    raise SystemExit("demo: no leader elected in time")


def main() -> int:
    deadline = time.monotonic() + TIMEOUT
    with tempfile.TemporaryDirectory(prefix="kvdemo-") as tmp:
        conf = Path(tmp) / "demo.conf"
        say("starting a 3-node cluster with raftCoreRun")
        launcher = subprocess.Popen(
            [PY, "-m", "kvserver.launcher", "-n", "3", "-f", str(conf),
             "--data-dir", str(Path(tmp) / "data")],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        pids: dict[int, int] = {}
        try:
            assert launcher.stdout is not None
            while len(pids) < 3:
                line = launcher.stdout.readline()
                if not line:
                    raise SystemExit("demo: raftCoreRun exited early")
                print("   " + line.rstrip(), flush=True)
                if line.startswith("node ") and " pid " in line:
                    parts = line.split()
                    pids[int(parts[1].rstrip(":"))] = int(parts[parts.index("pid") + 1])
            print("   " + launcher.stdout.readline().rstrip(), flush=True)
            print("   " + conf.read_text().replace("\n", "  "), flush=True)

            leader = wait_leader(conf, deadline)
            say("cluster status")
            print(caller(conf, "status").stdout, end="", flush=True)

            say(f"callerMain: the seed's loop, {ITERATIONS} x (put x=i; get x), "
                f"leader {leader} killed with SIGKILL after {KILL_AFTER}")
            work = subprocess.Popen(
                [PY, "-m", "clerk.caller_main", "-f", str(conf), "--count", str(ITERATIONS)],
                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert work.stdout is not None
            killed_at: float | None = None
            for seen, line in enumerate(work.stdout, start=1):
                if seen % 25 == 0 or seen <= 3:
                    print(f"   [{seen:3d}] {line.rstrip()}", flush=True)
                if seen == KILL_AFTER:
                    say(f"kill -9 the leader: node {leader} (pid {pids[leader]})")
                    os.kill(pids[leader], signal.SIGKILL)
                    killed_at = time.monotonic()
                if time.monotonic() > deadline:
                    work.kill()
                    raise SystemExit("demo: workload did not finish in time")
            code = work.wait()
            if killed_at is None:
                raise SystemExit("demo: workload ended before the leader was killed")
            new_leader = wait_leader(conf, deadline, not_id=leader)
            say(f"node {new_leader} took over; cluster status now")
            print(caller(conf, "status").stdout, end="", flush=True)
            if code != 0:
                raise SystemExit(f"demo: callerMain failed with exit code {code}")
            final = caller(conf, "get", "x").stdout.strip()
            say(f"workload finished, every value read back correctly; get x -> {final!r}")
            if final != "0":
                raise SystemExit(f"demo: final value {final!r}, expected '0'")
        finally:
            say("stopping the cluster")
            launcher.send_signal(signal.SIGTERM)
            try:
                out, _ = launcher.communicate(timeout=15)
                for line in out.splitlines():
                    print("   " + line, flush=True)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
    say("demo done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(1)
