"""The nemesis: real ``kvserver`` processes behind per-link TCP proxies, and a
seeded, logged fault scheduler.

:class:`ProxiedCluster` starts N ``kvserver`` processes. Node ``i`` gets its
own config file (``DIR/node<i>.conf``) in which its own entry is its real
address and every peer entry is the :class:`~tests.nemesis.proxy.ProxyMesh`
link ``i -> j``; so every Raft message crosses a proxy that can blackhole,
delay or reset it. Clients talk to the nodes' real addresses. The cluster
can kill -9, restart, SIGSTOP and SIGCONT any node; :meth:`ProxiedCluster.close`
stops every process it started (by pid, SIGCONT first) and the proxies.

Membership changes (tests/nemesis/membership.py): :meth:`ProxiedCluster.add_node`
gives a new node a new id, port, data dir, log file and config, and
``start_node`` runs it with ``--id ID --addr 127.0.0.1:PORT --join``. The
cluster tracks :attr:`~ProxiedCluster.members` (what the membership script
made) and :attr:`~ProxiedCluster.leaving` (removal under way): faults aim at
members that are not leaving, and restarts (``heal_all``, the end of a kill
fault) start only members that are not leaving. A node whose removal the
script asked for may exit 0 by itself (the store stops a removed node):
expected, not a crash; any other exit is.

:class:`Nemesis` injects faults on a schedule drawn from
``random.Random(seed)``: which fault, how long it is held, how long the
cluster is left alone in between. Every action is appended to
:attr:`Nemesis.events` with its time since the start of the run (and logged
to ``tests.nemesis``), so a failing run can be read and replayed by seed
(``python -m tests.nemesis.scenario --seed S ...``). The seed fixes the
sequence of fault kinds, durations and random choices; which node is the
leader at a given moment depends on timing and is recorded in the log.

Fault kinds (:data:`FAULT_KINDS`):

``kill_leader`` / ``kill_random``
    kill -9 a node, keep it down for a while, restart it from its data dir.
``pause_leader``
    SIGSTOP the leader until another node is elected (or the hold runs
    out), then SIGCONT: the old leader wakes up believing it still leads.
``isolate_leader``
    blackhole every link between the leader and the others (clients can
    still reach it: it must not answer reads or acknowledge writes).
``partition``
    a random majority/minority split (the leader lands on either side).
``one_way``
    nothing the leader sends reaches the others, it still hears them.
    (The network faults act on the proxied links only: a node added by a
    membership change is dialed directly, so a leader that joined later
    cannot be isolated (the fault is skipped and recorded) and a partition
    of the original nodes is bridged by the nodes that joined.)
``slow``
    every link delayed by tens to hundreds of ms with jitter.
``reset_links``
    every peer connection reset at once (the nodes must reconnect).
``crash_all``
    kill -9 every node at once, then restart them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvserver import kv_pb2
from kvserver.launcher import free_ports
from tests.e2e.harness import node_status
from tests.nemesis.proxy import ProxyMesh, ProxyThread

__all__ = [
    "FAULT_KINDS",
    "FaultEvent",
    "Nemesis",
    "ProxiedCluster",
]

log = logging.getLogger("tests.nemesis")

FAULT_KINDS: tuple[str, ...] = (
    "kill_leader",
    "kill_random",
    "pause_leader",
    "isolate_leader",
    "partition",
    "one_way",
    "slow",
    "reset_links",
    "crash_all",
)

_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FaultEvent:
    """One nemesis action, ``t`` seconds after the start of the run."""

    t: float
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.t:8.3f}s  {self.kind:<14} {self.detail}"


class ProxiedCluster:
    """N kvserver processes whose peer links all go through a ProxyMesh, plus
    the nodes :meth:`add_node` adds later.

    Ids are positions in :attr:`addresses` (node ``i`` listens on
    ``addresses[i]``); the first ``n`` are proxied. A node added later is
    *not* behind proxies: the others dial it at the address in the log (it
    is in none of their config files, which cannot change: a node refuses a
    config that disagrees with its data dir), and it dials them at their
    real addresses (its config lists those). Process control is
    thread-safe (the nemesis and the membership script act concurrently
    from worker threads).
    """

    def __init__(
        self,
        n: int,
        base_dir: str | Path,
        extra_args: Sequence[str] = (),
        log_level: str = "info",
    ) -> None:
        self.n = n
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.extra_args = [*extra_args, "--log-level", log_level]
        self.addresses: list[tuple[str, int]] = [("127.0.0.1", p) for p in free_ports(n)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        # Exits we caused (kill -9); any other exit is an anomaly.
        self.expected_exits: set[int] = set()
        self.unexpected_exits: list[str] = []
        # The membership as the membership script made it, nodes whose
        # removal it asked for (still members until it is confirmed), the
        # nodes started with --join, and removed nodes that stopped by
        # themselves (exit 0: expected).
        self.members: set[int] = set(range(n))
        self.leaving: set[int] = set()
        self.joined: set[int] = set()
        self.removed_exits: list[int] = []
        self.lock = threading.RLock()
        self._thread = ProxyThread()
        try:
            self.mesh = ProxyMesh(self._thread, self.addresses)
            for i in range(n):
                self.mesh.write_config(i, self.config_path(i))
        except BaseException:
            self._thread.close()
            raise

    # -- paths -------------------------------------------------------------

    def config_path(self, i: int) -> Path:
        return self.base_dir / f"node{i}.conf"

    def log_path(self, i: int) -> Path:
        return self.base_dir / f"node{i}.log"

    def data_path(self, i: int) -> Path:
        return self.base_dir / f"node{i}"

    def address(self, i: int) -> str:
        """Node ``i``'s real address, "host:port" (as the log holds it)."""
        host, port = self.addresses[i]
        return f"{host}:{port}"

    def addresses_of(self, i: int) -> set[str]:
        """Every "host:port" that reaches node ``i``: its own, and for a
        proxied node the links to it (the bootstrap membership in the log
        is the config of the node that bootstrapped, where its peers are
        proxies)."""
        found = {self.address(i)}
        if i < self.n:
            found |= {f"{h}:{p}" for (_, j), link in self.mesh.links.items() if j == i
                      for h, p in [link.address]}
        return found

    def active(self) -> list[int]:
        """Members that are not leaving: what faults aim at and restarts start."""
        with self.lock:
            return sorted(self.members - self.leaving)

    def member_addresses(self) -> list[tuple[str, int]]:
        with self.lock:
            return [self.addresses[i] for i in sorted(self.members)]

    def add_node(self) -> int:
        """Allocate the next id, a free port, a data dir and a config for a
        node that will join (``member add`` it first, then ``start_node``)."""
        with self.lock:
            i = len(self.addresses)
            self.addresses.append(("127.0.0.1", free_ports(1)[0]))
            self.joined.add(i)
            return i

    def join_node(self, i: int) -> None:
        """Start node ``i`` (from :meth:`add_node`, already added as a
        learner) with ``--join``; it is a member from now on."""
        with self.lock:
            self.start_node(i)
            self.members.add(i)

    def _write_join_config(self, i: int) -> None:
        # Config ids must be 0..N-1 without gaps, and a peer named in it is
        # dialed at the address given: list every node ever allocated at
        # its real address (removed ones are dialed by nobody, not being
        # members). Rewritten at each start so that a restarted joiner
        # shares current members with the membership its data dir holds.
        lines = []
        for j, (host, port) in enumerate(self.addresses):
            lines += [f"node{j}ip={host}", f"node{j}port={port}"]
        self.config_path(i).write_text("\n".join(lines) + "\n")

    # -- processes -----------------------------------------------------------

    def start_node(self, i: int) -> None:
        with self.lock:
            self.check_exits()
            if i in self.procs and self.procs[i].poll() is None:
                raise RuntimeError(f"node {i} is already running (pid {self.procs[i].pid})")
            join: list[str] = []
            if i in self.joined:
                self._write_join_config(i)
                join = ["--addr", self.address(i), "--join"]
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            with open(self.log_path(i), "ab") as logf:
                logf.write(f"===== nemesis: starting node {i} at {time.time():.3f}\n".encode())
                logf.flush()
                self.procs[i] = subprocess.Popen(
                    [sys.executable, "-m", "kvserver.main", "--id", str(i), *join,
                     "-f", str(self.config_path(i)), "--data-dir", str(self.data_path(i)),
                     *self.extra_args],
                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=_REPO, env=env,
                )
            self.expected_exits.discard(i)

    def restart(self, i: int) -> bool:
        """Start node ``i`` if it is down and an active member; whether it did."""
        with self.lock:
            if i not in self.active() or self.alive(i):
                return False
            self.start_node(i)
            return True

    def start(self) -> None:
        for i in range(self.n):
            self.start_node(i)

    def alive(self, i: int) -> bool:
        proc = self.procs.get(i)
        return proc is not None and proc.poll() is None

    def check_exits(self) -> list[str]:
        """Record nodes that exited without being killed by us (a crash),
        except a node whose removal was asked for that exits 0."""
        with self.lock:
            for i, proc in self.procs.items():
                code = proc.poll()
                if code is not None and i not in self.expected_exits:
                    self.expected_exits.add(i)  # report once
                    if code == 0 and (i in self.leaving or i not in self.members):
                        self.removed_exits.append(i)
                        log.info("nemesis: removed node %d exited 0 by itself", i)
                        continue
                    tail = self.log_path(i).read_text(errors="replace")[-1500:]
                    self.unexpected_exits.append(
                        f"node {i} (pid {proc.pid}) exited by itself with code {code}; "
                        f"log tail:\n{tail}"
                    )
            return self.unexpected_exits

    def kill(self, i: int) -> None:
        """kill -9 node i (SIGCONT first if it is paused) and reap it."""
        with self.lock:
            self.check_exits()
            proc = self.procs.get(i)
            if proc is None:
                return
            self.expected_exits.add(i)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                if i in self.paused:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGCONT)
                proc.wait(timeout=10)
            self.paused.discard(i)

    def pause(self, i: int) -> None:
        with self.lock:
            proc = self.procs.get(i)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGSTOP)
                self.paused.add(i)

    def resume(self, i: int) -> None:
        with self.lock:
            proc = self.procs.get(i)
            if proc is not None and i in self.paused:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                self.paused.discard(i)

    def heal_all(self) -> list[int]:
        """SIGCONT paused nodes, heal the network, remove delays, restart dead
        active members."""
        for i in list(self.paused):
            self.resume(i)
        self.mesh.heal()
        self.mesh.set_delay(0.0)
        with self.lock:
            self.check_exits()
            return [i for i in self.active() if self.restart(i)]

    def close(self) -> None:
        """Stop every process this cluster started (by pid) and the proxies."""
        try:
            for i, proc in self.procs.items():
                if proc.poll() is None:
                    self.expected_exits.add(i)
                    if i in self.paused:
                        with contextlib.suppress(ProcessLookupError):
                            proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
            self.paused.clear()
            deadline = time.monotonic() + 5.0
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            self._thread.close()

    # -- observation -----------------------------------------------------------

    async def statuses(self, nodes: Sequence[int] | None = None,
                       timeout: float = 0.5) -> list[kv_pb2.StatusReply | None]:
        """Status replies of ``nodes`` (default: the members), None where a
        node does not answer within ``timeout`` seconds."""
        if nodes is None:
            with self.lock:
                nodes = sorted(self.members)
        return list(await asyncio.gather(
            *(node_status(*self.addresses[i], timeout) for i in nodes)))

    async def leader(self, exclude: Sequence[int] = ()) -> int | None:
        """The leader of the highest term among the members that answer, if any."""
        best: tuple[int, int] | None = None
        for s in await self.statuses():
            if s is None:
                continue
            role, term, ident = s.role, s.term, s.id
            if role == "leader" and ident not in exclude and ident not in self.paused and (
                    best is None or term > best[0]):
                best = (term, ident)
        return None if best is None else best[1]

    async def wait_leader(self, timeout: float, exclude: Sequence[int] = ()) -> int | None:
        """Poll until some node leads (None after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = await self.leader(exclude)
            if leader is not None:
                return leader
            await asyncio.sleep(0.05)
        return None

    def log_problems(self) -> list[str]:
        """Tracebacks and CRITICAL lines in the node logs (each a bug)."""
        problems = []
        for i in range(len(self.addresses)):
            path = self.log_path(i)
            if not path.exists():
                continue
            lines = path.read_text(errors="replace").splitlines()
            for k, line in enumerate(lines):
                if "Traceback" in line or " CRITICAL " in line:
                    context = "\n".join(lines[max(0, k - 3): k + 12])
                    problems.append(f"{path.name}:{k + 1}: {line.strip()}\n{context}")
        return problems


# -- the scheduler -----------------------------------------------------------


@dataclass
class NemesisOptions:
    kinds: Sequence[str] = FAULT_KINDS
    hold: tuple[float, float] = (1.0, 3.0)  # how long a fault lasts
    quiet: tuple[float, float] = (0.5, 2.0)  # healthy time between faults
    leader_timeout: float = 8.0  # waiting for a leader to aim at


@dataclass
class Nemesis:
    """Injects faults from a seeded schedule until stopped; logs every action."""

    cluster: ProxiedCluster
    seed: int
    options: NemesisOptions = field(default_factory=NemesisOptions)
    t0: float = field(default_factory=time.monotonic)
    events: list[FaultEvent] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    on_event: Callable[[FaultEvent], None] | None = None

    def __post_init__(self) -> None:
        for kind in self.options.kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")
        self.rng = random.Random(self.seed)

    def record(self, kind: str, detail: str = "") -> None:
        ev = FaultEvent(time.monotonic() - self.t0, kind, detail)
        self.events.append(ev)
        log.info("nemesis %s", ev)
        if self.on_event is not None:
            self.on_event(ev)

    async def _do(self, fn: Callable[[], object]) -> None:
        # Process and proxy control block briefly; keep the event loop free.
        await asyncio.to_thread(fn)

    async def run(self, stop: asyncio.Event) -> None:
        """Fault, hold, heal, quiet; repeat until ``stop`` is set; heal at the end."""
        try:
            while not stop.is_set():
                quiet = self.rng.uniform(*self.options.quiet)
                if await _wait(stop, quiet):
                    break
                kind = self.rng.choice(list(self.options.kinds))
                hold = self.rng.uniform(*self.options.hold)
                await self.inject(kind, hold, stop)
        finally:
            await self.heal()

    async def heal(self) -> None:
        restarted: list[int] = []

        def go() -> None:
            restarted.extend(self.cluster.heal_all())

        await self._do(go)
        self.record("heal", f"network healed, delays off, restarted {restarted}")

    async def _target_leader(self) -> int:
        c = self.cluster
        leader = await c.wait_leader(self.options.leader_timeout, exclude=sorted(c.leaving))
        if leader is None or leader not in c.active():
            # No leader to aim at (e.g. still electing): pick a member by seed.
            leader = self.rng.choice(c.active())
            self.record("no_leader", f"no leader within {self.options.leader_timeout}s; "
                                     f"aiming at node {leader}")
        return leader

    async def inject(self, kind: str, hold: float, stop: asyncio.Event) -> None:
        c = self.cluster
        self.counts[kind] += 1
        if kind in ("kill_leader", "kill_random"):
            victim = await self._target_leader() if kind == "kill_leader" \
                else self.rng.choice(c.active())
            await self._do(lambda: c.kill(victim))
            self.record(kind, f"kill -9 node {victim}; down for {hold:.2f}s")
            await _wait(stop, hold)
            await self._restart([victim])
        elif kind == "pause_leader":
            victim = await self._target_leader()
            await self._do(lambda: c.pause(victim))
            self.record(kind, f"SIGSTOP node {victim}; up to {hold + 1.0:.2f}s")
            new = await c.wait_leader(hold + 1.0, exclude=[victim])
            self.record("new_leader", f"node {new} leads while {victim} is paused"
                        if new is not None else "no new leader seen")
            await _wait(stop, self.rng.uniform(0.2, 1.0))
            await self._do(lambda: c.resume(victim))
            self.record("resume", f"SIGCONT node {victim}")
        elif kind in ("isolate_leader", "one_way"):
            victim = await self._target_leader()
            if victim >= c.n:
                self.record("skipped", f"{kind}: node {victim} joined later, its links "
                                       f"are not proxied")
                return
            if kind == "isolate_leader":
                await self._do(lambda: c.mesh.isolate(victim))
                self.record(kind, f"node {victim} cut off from proxied peers for {hold:.2f}s")
            else:

                def block() -> None:
                    for j in range(c.n):
                        if j != victim:
                            c.mesh.block_one_way(victim, j)

                await self._do(block)
                self.record(kind, f"nothing node {victim} sends to proxied peers arrives, "
                                  f"for {hold:.2f}s")
            await _wait(stop, hold)
            await self._do(c.mesh.heal)
            self.record("heal", "network")
        elif kind == "partition":
            # Among the proxied nodes that are members (nodes that joined
            # later bridge the split: a partial partition then).
            nodes = [i for i in c.active() if i < c.n]
            self.rng.shuffle(nodes)
            minority = nodes[: self.rng.randint(1, max(1, (len(nodes) - 1) // 2))]
            majority = nodes[len(minority):]
            if not majority:
                self.record("skipped", f"partition: proxied members {nodes} cannot be split")
                return
            await self._do(lambda: c.mesh.partition(minority, majority))
            self.record(kind, f"minority {sorted(minority)} | majority {sorted(majority)} "
                              f"for {hold:.2f}s")
            await _wait(stop, hold)
            await self._do(c.mesh.heal)
            self.record("heal", "network")
        elif kind == "slow":
            delay = self.rng.uniform(0.02, 0.2)
            jitter = self.rng.uniform(0.0, delay)
            await self._do(lambda: c.mesh.set_delay(delay, jitter))
            self.record(kind, f"all links +{delay * 1000:.0f}ms (jitter {jitter * 1000:.0f}ms) "
                              f"for {hold:.2f}s")
            await _wait(stop, hold)
            await self._do(lambda: c.mesh.set_delay(0.0))
            self.record("fast", "delays off")
        elif kind == "reset_links":

            def reset() -> None:
                for link in c.mesh.links.values():
                    link.reset_connections()

            await self._do(reset)
            self.record(kind, "every peer connection reset")
        elif kind == "crash_all":
            victims = c.active()

            def kill_all() -> None:
                for i in victims:
                    c.kill(i)

            await self._do(kill_all)
            down = min(hold, 1.5)
            self.record(kind, f"kill -9 nodes {victims}; down for {down:.2f}s")
            await _wait(stop, down)
            await self._restart(victims)
        else:  # pragma: no cover - validated in __post_init__
            raise ValueError(kind)
        c.check_exits()

    async def _restart(self, nodes: Sequence[int]) -> None:
        """Restart those of ``nodes`` that are still active members (the
        membership script may have removed one meanwhile)."""
        started: list[int] = []

        def go() -> None:
            started.extend(i for i in nodes if self.cluster.restart(i))

        await self._do(go)
        self.record("restart", f"nodes {started}" + (
            f" (not {sorted(set(nodes) - set(started))}: removed, leaving or up)"
            if set(nodes) - set(started) else ""))


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` (part of a fault schedule) unless ``stop`` is set first."""
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    except TimeoutError:
        return False
    return True
