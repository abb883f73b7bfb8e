"""``make demo``: a real 3-node cluster, a workload, a leader killed mid-way,
then a dead follower replaced by a new node while a workload keeps running.

Everything runs as separate processes through the console scripts a user
would type: ``raftCoreRun`` starts the cluster, ``callerMain`` runs the seed's
put/get loop (and checks every value it reads), and the demo kills the leader
with SIGKILL half-way through, shows the new leader taking over and waits for
the workload to finish.

Then the replace-a-node runbook of the README (Raft dissertation chapter 4:
one server at a time): the old leader is restarted from its data dir, a
``Clerk`` thread starts a put/get workload that reports ops/s every second,
a follower is killed with SIGKILL, and the demo runs ``callerMain member
remove`` for it, ``member add`` for a new id on a new port, starts that node
with ``kvserver --id NEW --addr HOST:PORT --join`` (its own, empty data dir),
waits until ``member list`` shows it caught up, ``member promote``s it and
prints ``member list`` before and after. The workload must see no error.
The demo stops every process it started, by pid, and exits 0 only if every
value read was correct. Bounded in time; every wait polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from clerk import Clerk, ClerkError
from kvserver.launcher import free_ports

PY = sys.executable
ITERATIONS = 300
KILL_AFTER = 100
TIMEOUT = 150.0
#: Seconds the replacement workload runs before the follower is killed, so
#: its ops/s before the fault are on screen.
STEADY = 2.0

_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(f"\n==> {text}", flush=True)


def show(text: str) -> None:
    with _print_lock:
        for line in text.splitlines():
            print("   " + line, flush=True)


def caller(conf: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "clerk.caller_main", "-f", str(conf), *args],
                          capture_output=True, text=True, timeout=timeout)


def run_shown(conf: Path, *args: str) -> str:
    """Run ``callerMain -f CONF ARGS`` as a user would, echo the command and
    its output; a failure ends the demo with callerMain's own one line."""
    show(f"$ callerMain -f {conf.name} {' '.join(args)}")
    done = caller(conf, *args)
    show(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"demo: callerMain {' '.join(args)} exited {done.returncode}")
    return done.stdout


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


def member_matches(conf: Path) -> dict[int, tuple[str, int]]:
    """``member list`` as {id: (role, match index)}; {} if it failed."""
    done = caller(conf, "--timeout", "5", "member", "list")
    rows: dict[int, tuple[str, int]] = {}
    if done.returncode != 0:
        return rows
    for line in done.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit():
            rows[int(parts[0])] = (parts[2], int(parts[3]))
    return rows


class Workload:
    """A ``Clerk`` in a thread: put w<i % 50> = i, read it back, check it.

    Counts the operations acknowledged each second (a reporter thread prints
    them, so a stall shows as a line of 0) and every error: a ClerkError
    (the clerk retries for ``timeout`` seconds before raising one) or a
    wrong value read back."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.ops = 0
        self.errors: list[str] = []
        self.per_second: list[int] = []
        self.longest_pause = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="workload"),
                         threading.Thread(target=self._report, name="reporter")]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a dead thread must not pass as "no errors"
            self.errors.append(f"workload stopped: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        with Clerk.from_config(self.conf, timeout=20.0) as ck:
            i = 0
            last = time.monotonic()
            while not self._stop.is_set():
                key, value = f"w{i % 50}", str(i)
                try:
                    ck.put(key, value)
                    got = ck.get(key)
                except ClerkError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if got != value.encode():
                    self.errors.append(f"get {key} returned {got!r}, expected {value!r}")
                now = time.monotonic()
                self.longest_pause = max(self.longest_pause, now - last)
                last = now
                self.ops += 2
                i += 1

    def _report(self) -> None:
        # Reporting, not synchronization: one line a second until stopped.
        seen = 0
        while not self._stop.wait(1.0):
            ops = self.ops
            self.per_second.append(ops - seen)
            seen = ops
            with _print_lock:
                print(f"   [workload] {len(self.per_second):3d} s: {self.per_second[-1]:5d} ops/s,"
                      f" errors {len(self.errors)}", flush=True)


def start_node(conf: Path, node: int, data_dir: Path, log: Path,
               *extra: str) -> subprocess.Popen[bytes]:
    """``kvserver --id NODE -f CONF --data-dir DIR EXTRA``, its output in LOG.

    Run through ``kvserver.child`` (what raftCoreRun does): the same
    ``kvserver`` main, but the node gets SIGTERM from the kernel if the demo
    dies, so even a killed demo leaves no process behind."""
    args = ["--id", str(node), *extra, "-f", str(conf), "--data-dir", str(data_dir)]
    show(f"$ kvserver {' '.join(args)}   (log {log})")
    with open(log, "ab") as out:
        proc = subprocess.Popen([PY, "-m", "kvserver.child", str(os.getpid()), *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    show(f"pid {proc.pid}")
    return proc


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def failover(conf: Path, pids: dict[int, int], deadline: float) -> int:
    """Part 1: the seed's loop while the leader is killed; returns its id."""
    leader = wait_leader(conf, deadline)
    say("cluster status")
    show(caller(conf, "status").stdout)

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
    show(caller(conf, "status").stdout)
    if code != 0:
        raise SystemExit(f"demo: callerMain failed with exit code {code}")
    final = caller(conf, "get", "x").stdout.strip()
    say(f"workload finished, every value read back correctly; get x -> {final!r}")
    if final != "0":
        raise SystemExit(f"demo: final value {final!r}, expected '0'")
    return leader


def replace(conf: Path, tmp: Path, pids: dict[int, int], dead: int, deadline: float,
            started: list[subprocess.Popen[bytes]]) -> None:
    """Part 2: replace a dead follower while a workload runs."""
    data = tmp / "data"
    say(f"restart node {dead} (killed above) from its data dir, so that 3 voters run again")
    started.append(start_node(conf, dead, data / f"node{dead}", data / f"node{dead}.log"))
    while True:
        rows = member_matches(conf)
        if dead in rows and rows[dead][1] > 0 and leader_of(conf) is not None:
            top = max(match for _, match in rows.values())
            if rows[dead][1] >= top:
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: node {dead} did not catch up after its restart")
        time.sleep(0.1)
    run_shown(conf, "member", "list")

    say("a Clerk workload (put w<i>=i; get w<i>, checked) runs from now on")
    workload = Workload(conf)
    workload.start()
    try:
        steady_until = time.monotonic() + STEADY
        while time.monotonic() < steady_until:
            time.sleep(0.1)  # let a couple of ops/s lines show before the fault
        leader = wait_leader(conf, deadline)
        # One of raftCoreRun's nodes that is neither the leader nor the one
        # restarted above (with 3 nodes there is always one).
        victim = next(i for i in sorted(pids) if i not in (leader, dead))
        pid = pids[victim]
        say(f"kill -9 follower node {victim} (pid {pid}); it is dead for good: replace it")
        os.kill(pid, signal.SIGKILL)
        new_id = max(pids) + 1
        new_port = free_ports(1)[0]
        new_addr = f"127.0.0.1:{new_port}"

        say(f"the runbook: member list; member remove {victim}; member add {new_id} {new_addr}")
        run_shown(conf, "member", "list")
        run_shown(conf, "member", "remove", str(victim))
        run_shown(conf, "member", "add", str(new_id), new_addr)

        say(f"start node {new_id} with an empty data dir; it joins as the learner "
            "`member add` made it and catches up from the leader")
        started.append(start_node(conf, new_id, data / f"node{new_id}", data / f"node{new_id}.log",
                                  "--addr", new_addr, "--join"))
        while True:
            rows = member_matches(conf)
            if new_id in rows:
                top = max(match for _, match in rows.values())
                mine = rows[new_id][1]
                show(f"member list: learner {new_id} match {mine}, leader {top}")
                # The promote rule (90% of the leader's log, as etcd's) would
                # let it in earlier; waiting for all of it is the runbook's
                # advice and still takes only a moment.
                if mine > 0 and mine >= top - 2:
                    break
            if started[-1].poll() is not None:
                raise SystemExit(f"demo: node {new_id} exited with code {started[-1].poll()};"
                                 f" see {data / f'node{new_id}.log'}")
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: node {new_id} did not catch up in time")
            time.sleep(0.3)
        run_shown(conf, "member", "promote", str(new_id))
        run_shown(conf, "member", "list")
        steady_until = time.monotonic() + STEADY
        while time.monotonic() < steady_until:
            time.sleep(0.1)  # the workload goes on against the new voter set
    finally:
        workload.stop()
    rates = workload.per_second
    say(f"workload: {workload.ops} ops in {len(rates)} s, ops/s min {min(rates, default=0)} "
        f"max {max(rates, default=0)}, longest pause between two checked put+get "
        f"{workload.longest_pause * 1000:.0f} ms, errors {len(workload.errors)}")
    if not workload.ops:
        raise SystemExit("demo: the workload acknowledged nothing")
    if workload.errors:
        show("\n".join(workload.errors[:5]))
        raise SystemExit(f"demo: the workload saw {len(workload.errors)} errors")
    run_shown(conf, "get", "w0")


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
        started: list[subprocess.Popen[bytes]] = []
        try:
            assert launcher.stdout is not None
            while len(pids) < 3:
                line = launcher.stdout.readline()
                if not line:
                    raise SystemExit("demo: raftCoreRun exited early")
                show(line)
                if line.startswith("node ") and " pid " in line:
                    parts = line.split()
                    pids[int(parts[1].rstrip(":"))] = int(parts[parts.index("pid") + 1])
            show(launcher.stdout.readline())
            show(conf.read_text().replace("\n", "  "))
            dead = failover(conf, pids, deadline)
            replace(conf, Path(tmp), pids, dead, deadline, started)
        finally:
            say("stopping the cluster: raftCoreRun's nodes, then the nodes the demo started")
            launcher.send_signal(signal.SIGTERM)
            try:
                out, _ = launcher.communicate(timeout=15)
                show(out)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
            for proc in started:
                stop_node(proc)
                show(f"pid {proc.pid} exited with code {proc.returncode}")
    say("demo done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(1)
