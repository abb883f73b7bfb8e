"""Deterministic cluster simulator for ``RaftCore`` (issue 3, part 2).

One run = one seed + one ``FaultProfile``. Everything random comes from
``random.Random`` instances derived from the seed; there is no wall clock and
no thread, so a seed replays exactly:

    python -m tests.sim.simulator --seed 1234 --profile crashes --verbose

The model, in the spirit of MIT 6.5840's ``labrpc`` and etcd's interaction
tests:

* N nodes (3 or 5), each a ``RaftCore`` over its own ``MemoryStorage`` (its
  "disk") and a tiny state machine (a digest chain over applied entries plus
  the list of ``(index, data)`` applied since the last restore).
* Virtual time is counted in ticks; each tick is split into ``substeps``
  delivery rounds. A global step either ticks every live node (start of a
  tick) or delivers the messages due in one round.
* The network drops, duplicates and delays (hence reorders) messages by
  probability, and applies symmetric partitions and one-way link cuts, both
  when a message is sent and when it arrives.
* A crash throws the ``RaftCore`` and the state machine away; only what was
  handed to ``storage.save`` survives. A restart rebuilds the core from the
  storage and the state machine from the storage's snapshot (applied index =
  snapshot index); the core then re-delivers committed entries.
* The workload proposes unique payloads, issues ReadIndex reads, takes
  application snapshots and compacts the log (so lagging nodes need
  InstallSnapshot), and asks leaders to transfer leadership.
* With ``member_rate`` (the "membership" profiles) it also asks for
  membership changes, one server at a time (dissertation chapter 4): add a
  brand-new empty node as a learner (a fresh id, empty storage, a config
  that knows no membership: what ``kvserver --join`` starts), promote a
  learner, remove a voter (the leader too) or a learner, and now and then a
  change the target must refuse. Refusals (not leader, previous change
  uncommitted, own-term entry not committed yet, a change that does not
  fit) are expected outcomes, counted in the stats. A removed node keeps
  running, and is checked like any other; once its removal is committed it
  may be stopped for good. ``member_on_election`` also asks a freshly
  elected leader for a change in the same delivery round, before its no-op
  can have committed (where the 2015 single-server bug lives).
* Each node's ``Ready``s go through ``raft.ready_processor.ReadyProcessor``,
  the driver ``RaftNode`` runs too: messages that may leave at once leave,
  snapshots and committed entries are applied, and the writes are made
  durable either at once or a few delivery rounds later (a slow fsync),
  while the node keeps taking Readys; only then do the acknowledgements
  leave. A crash loses every write not yet durable.

After the faulty phase the network heals, every node restarts (but those
stopped for good), and the run must show liveness: a leader known to every
member of its configuration within ``10 * election_tick`` ticks, and fresh
proposals applied by all those members within as many again; a removed
node that still runs must not prevent that. The
invariants are in ``tests/sim/checker.py``; any violation stops the run and
the result carries a readable trace of the last events and the replay command.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import importlib
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from random import Random
from typing import Any

from raft.core import (
    ConfChangeError,
    ConfChangeRefused,
    Config,
    NotLeader,
    ProposalDropped,
    RaftCore,
)
from raft.membership import ConfChange, ConfChangeOp, Membership
from raft.ready_processor import ReadyProcessor
from raft.storage import MemoryStorage
from raft.types import (
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)
from tests.sim.checker import Checker, LogView, SafetyViolation

__all__ = [
    "PROFILES",
    "FaultProfile",
    "SimResult",
    "Simulator",
    "run_seed",
    "run_seeds",
]

CoreFactory = Callable[[Config, MemoryStorage], RaftCore]
StorageFactory = Callable[[], MemoryStorage]
ProcessorFactory = Callable[..., ReadyProcessor]


# --------------------------------------------------------------------------
# Fault profiles
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultProfile:
    """How hostile one run is. Rates are per tick unless stated otherwise."""

    name: str
    nodes: int = 3
    #: Ticks of the faulty phase (the liveness phase comes after).
    ticks: int = 300
    #: Delivery rounds per tick.
    substeps: int = 4
    # network
    drop: float = 0.0
    dup: float = 0.0
    #: Delay of a message in delivery rounds, inclusive range (>= 1).
    delay: tuple[int, int] = (1, 2)
    partition_rate: float = 0.0
    cut_rate: float = 0.0
    heal_rate: float = 0.0
    # nodes
    crash_rate: float = 0.0
    #: Probability that a crash picks the current leader.
    leader_crash_bias: float = 0.5
    downtime: tuple[int, int] = (5, 40)
    #: At most this many nodes down at once (None: a minority).
    max_down: int | None = None
    #: Per node per tick: probability that its tick is missed (clock skew).
    tick_skip: float = 0.0
    # workload
    propose_rate: float = 0.5
    read_rate: float = 0.15
    transfer_rate: float = 0.0
    #: Per node per tick: probability of an application snapshot + compaction.
    snapshot_rate: float = 0.0
    snapshot_min_gap: int = 5
    #: Filler bytes in a snapshot, so snapshots span several chunks.
    snapshot_pad: int = 300
    # core config
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 256
    max_inflight_msgs: int = 4
    max_inflight_bytes: int = 2048
    snapshot_chunk_size: int = 128
    #: Model the transport's failure report: a message that cannot be sent
    #: (link partitioned or peer down *at send time*, i.e. the connection is
    #: refused) makes the sender call ``report_unreachable``. Messages lost
    #: in flight (random loss, crash after sending) are never reported.
    report_unreachable: bool = True
    #: Ticks between whole-log (Log Matching) checks.
    check_every: int = 25
    # membership (dissertation chapter 4)
    #: Per tick: probability that the application asks for one change.
    member_rate: float = 0.0
    #: Probability that a newly elected leader is asked for a change at once.
    member_on_election: float = 0.0
    #: Never promote past this many voters.
    max_voters: int = 7
    #: Node ids ever created (the initial ones included).
    max_nodes: int = 12
    #: Per tick per removed node: probability it is stopped for good once
    #: its removal is committed.
    retire_rate: float = 0.0


PROFILES: dict[str, FaultProfile] = {
    p.name: p
    for p in [
        FaultProfile("reliable", transfer_rate=0.01),
        FaultProfile("lossy", drop=0.1, dup=0.05, delay=(1, 12), tick_skip=0.05),
        FaultProfile(
            "partitions",
            nodes=5,
            drop=0.03,
            delay=(1, 6),
            partition_rate=0.03,
            cut_rate=0.03,
            heal_rate=0.04,
            transfer_rate=0.01,
        ),
        FaultProfile(
            "crashes",
            drop=0.02,
            delay=(1, 6),
            crash_rate=0.04,
            downtime=(2, 40),
            transfer_rate=0.01,
        ),
        FaultProfile(
            "snapshots",
            drop=0.05,
            delay=(1, 6),
            crash_rate=0.02,
            partition_rate=0.02,
            heal_rate=0.05,
            snapshot_rate=0.08,
            snapshot_min_gap=3,
            propose_rate=1.0,
        ),
        FaultProfile(
            "chaos",
            nodes=5,
            drop=0.08,
            dup=0.05,
            delay=(1, 10),
            partition_rate=0.03,
            cut_rate=0.03,
            heal_rate=0.04,
            crash_rate=0.03,
            max_down=2,
            tick_skip=0.05,
            transfer_rate=0.02,
            snapshot_rate=0.03,
            propose_rate=1.0,
        ),
        # Membership changes under every fault: partitions, cuts, crashes,
        # loss, duplication, snapshots and compaction.
        FaultProfile(
            "membership",
            drop=0.03,
            dup=0.02,
            delay=(1, 6),
            partition_rate=0.02,
            cut_rate=0.02,
            heal_rate=0.05,
            crash_rate=0.03,
            downtime=(2, 30),
            transfer_rate=0.01,
            snapshot_rate=0.04,
            snapshot_min_gap=3,
            propose_rate=1.0,
            member_rate=0.1,
            member_on_election=0.3,
            retire_rate=0.05,
        ),
        # Ongaro's 2015 schedule needs a leader with an uncommitted change
        # that loses office, and its successor changing the membership
        # before committing anything: leaders crash and lose office often,
        # and each new one is asked for a change at once.
        FaultProfile(
            "membership-churn",
            nodes=4,
            drop=0.1,
            delay=(1, 8),
            partition_rate=0.05,
            cut_rate=0.03,
            heal_rate=0.05,
            crash_rate=0.08,
            leader_crash_bias=0.8,
            downtime=(1, 15),
            propose_rate=1.0,
            read_rate=0.05,
            snapshot_rate=0.02,
            # No leader lease: a voter may vote for a new candidate at once
            # (the 2015 schedule needs that, see test_core_membership.py).
            check_quorum=False,
            member_rate=0.3,
            member_on_election=0.9,
            retire_rate=0.05,
        ),
        # Figure 8 of the paper: leaders crash right after replicating to a
        # minority, over and over, with many proposals. Used to hunt the
        # "commit a previous-term entry by counting replicas" bug.
        FaultProfile(
            "figure8",
            drop=0.25,
            delay=(1, 8),
            crash_rate=0.15,
            leader_crash_bias=0.9,
            downtime=(1, 20),
            partition_rate=0.02,
            heal_rate=0.05,
            propose_rate=2.0,
            read_rate=0.0,
            pre_vote=False,
            # One entry per APPEND, one in flight: old-term entries trickle
            # to a lagging follower one by one, a wide Figure 8 window.
            max_size_per_msg=1,
            max_inflight_msgs=1,
        ),
    ]
}


# --------------------------------------------------------------------------
# Pieces of the world
# --------------------------------------------------------------------------


def _digest(prev: bytes, e: Entry) -> bytes:
    h = hashlib.blake2b(prev, digest_size=8)
    h.update(e.index.to_bytes(8, "big"))
    h.update(e.term.to_bytes(8, "big"))
    h.update(e.data)
    return h.digest()


class StateMachine:
    """The application: a digest chain over every applied entry (so a
    snapshot can prove it holds exactly the cluster's prefix), plus the
    ``(index, data)`` pairs applied since the last restore."""

    __slots__ = ("applied", "digest", "index")

    def __init__(self) -> None:
        self.index = 0
        self.digest = b""
        self.applied: list[tuple[int, bytes]] = []

    def apply(self, e: Entry) -> None:
        self.index = e.index
        self.digest = _digest(self.digest, e)
        self.applied.append((e.index, e.data))

    def snapshot(self, pad: int) -> bytes:
        return b"sm|%d|%s|" % (self.index, self.digest.hex().encode()) + b"." * pad

    @classmethod
    def restore(cls, data: bytes) -> StateMachine:
        sm = cls()
        if data:
            _, idx, hexd, _ = data.split(b"|", 3)
            sm.index = int(idx)
            sm.digest = bytes.fromhex(hexd.decode())
        return sm


class Network:
    """Virtual-time network. Time is counted in delivery rounds."""

    def __init__(self, rng: Random, profile: FaultProfile) -> None:
        self.rng = rng
        self.drop = profile.drop
        self.dup = profile.dup
        self.delay = profile.delay
        self._heap: list[tuple[int, float, Message]] = []
        #: node -> group; messages between different groups are lost.
        self.groups: dict[int, int] = {}
        #: one-way cuts (src, dst).
        self.cuts: set[tuple[int, int]] = set()

    def blocked(self, src: int, dst: int) -> bool:
        if (src, dst) in self.cuts:
            return True
        g = self.groups
        return bool(g) and g.get(src, 0) != g.get(dst, 0)

    def send(self, msg: Message, now: int) -> str | None:
        """Queue ``msg``; returns why it was lost, or None."""
        rng = self.rng
        if self.blocked(msg.src, msg.dst):
            return "partition"
        if self.drop and rng.random() < self.drop:
            return "loss"
        lo, hi = self.delay
        heapq.heappush(self._heap, (now + rng.randint(lo, hi), rng.random(), msg))
        if self.dup and rng.random() < self.dup:
            heapq.heappush(self._heap, (now + rng.randint(lo, hi), rng.random(), msg))
            return "dup"
        return None

    def due(self, now: int) -> list[Message]:
        heap = self._heap
        out: list[Message] = []
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out

    def __len__(self) -> int:
        return len(self._heap)


@dataclass
class SimNode:
    id: int
    storage: MemoryStorage
    core: RaftCore | None = None
    sm: StateMachine = field(default_factory=StateMachine)
    restart_at: int = 0
    #: The node's driver (a new one with every core).
    proc: ReadyProcessor | None = None
    #: Its writes are "in flight" (a slow fsync) until this delivery round;
    #: 0: none. Meanwhile the node keeps taking Readys, as RaftNode does.
    pending_until: int = 0
    role: Role = Role.FOLLOWER
    term: int = 0
    commit: int = 0
    incarnation: int = 0
    #: Added by a membership change: started empty, knowing no membership.
    joined: bool = False
    #: Stopped for good (its removal is committed); never restarted.
    gone: bool = False


class _Disk:
    """A node's storage as its driver writes it: the checker sees each write
    (durable at once: the simulator writes only when it syncs)."""

    def __init__(self, sim: Simulator, n: SimNode) -> None:
        self.sim = sim
        self.n = n

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None, *, sync: bool = True) -> bool:
        self.sim.checker.on_persist(self.n.id, hard_state, tuple(entries))
        self.n.storage.save(hard_state, entries, snapshot)
        return False


class _Hooks:
    """What a node's driver does with a Ready's parts, in the simulation."""

    def __init__(self, sim: Simulator, n: SimNode) -> None:
        self.sim = sim
        self.n = n

    def send(self, msg: Message) -> None:
        self.sim._send(msg)

    def restore(self, snapshot: Snapshot) -> None:
        self.sim._install(self.n, snapshot)

    def apply(self, entries: tuple[Entry, ...]) -> None:
        n, sim = self.n, self.sim
        for entry in entries:
            n.sm.apply(entry)
            sim.checker.on_apply(n.id, entry, n.sm.digest)
        sim.stats["applied"] += len(entries)

    def read_ready(self, read: ReadState) -> None:
        n, sim = self.n, self.sim
        assert n.core is not None
        sim._ev(n.id, "READ-OK", f"ctx={read.context!r} index={read.index}")
        sim.checker.on_read_release(n.id, read, n.core.term, n.core.role is Role.LEADER)

    def role_changed(self, soft: SoftState) -> None:
        pass

    def flush(self) -> None:
        pass

    def membership_changed(self, membership: Membership) -> None:
        pass


@dataclass
class SimResult:
    """Outcome of one seed. ``report`` is the printable failure trace."""

    seed: int
    profile: str
    ok: bool
    invariant: str | None = None
    detail: str | None = None
    report: str = ""
    stats: Counter[str] = field(default_factory=Counter)


class LivenessFailure(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant
        self.detail = detail


def _fmt_msg(m: Message) -> str:
    s = f"{m.type.name} {m.src}->{m.dst} t{m.term}"
    t = m.type
    if t in (MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE):
        s += f" prev/last={m.index}@t{m.log_term}"
    if t == MessageType.APPEND:
        if m.entries:
            s += f" ents=[{m.entries[0].index}..{m.entries[-1].index}]"
        s += f" commit={m.commit}"
    elif t == MessageType.APPEND_RESPONSE:
        s += f" index={m.index}"
    elif t == MessageType.HEARTBEAT:
        s += f" commit={m.commit}"
    elif t == MessageType.SNAPSHOT and m.snapshot is not None:
        s += f" snap={m.snapshot.index}@t{m.snapshot.term} off={m.offset} done={m.done}"
    elif t == MessageType.SNAPSHOT_RESPONSE:
        s += f" index={m.index} off={m.offset}"
    if m.reject:
        s += f" REJECT hint={m.reject_hint}@t{m.reject_term}"
    if m.context:
        s += f" ctx={m.context!r}"
    return s


# --------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------


class Simulator:
    """One seeded run. ``run()`` returns a ``SimResult``."""

    def __init__(
        self,
        seed: int,
        profile: FaultProfile,
        *,
        core_factory: CoreFactory | None = None,
        storage_factory: StorageFactory = MemoryStorage,
        processor_factory: ProcessorFactory | None = None,
        trace_len: int = 80,
        verbose: bool = False,
        replay_hint: str = "",
        rule_checks: bool = True,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self.core_factory: CoreFactory = core_factory or RaftCore
        self.storage_factory = storage_factory
        self.processor_factory: ProcessorFactory = processor_factory or ReadyProcessor
        self.verbose = verbose
        self.replay_hint = replay_hint
        master = Random(seed)
        self.net_rng = Random(master.getrandbits(64))
        self.fault_rng = Random(master.getrandbits(64))
        self.work_rng = Random(master.getrandbits(64))
        self.node_rng_seeds = [master.getrandbits(64) for _ in range(profile.nodes)]
        # Drawn last, so that profiles without membership changes replay
        # exactly as before it existed.
        self.member_rng = Random(master.getrandbits(64))
        self.net = Network(self.net_rng, profile)
        self.checker = Checker(rule_checks=rule_checks)
        self.peers = frozenset(range(profile.nodes))
        self.nodes = [SimNode(i, storage_factory()) for i in range(profile.nodes)]
        self.now = 0  # in delivery rounds
        self.tick_no = 0
        self.trace: deque[tuple[int, int, str, Any]] = deque(maxlen=trace_len)
        self.stats: Counter[str] = Counter()
        self._proposals = 0
        self._reads = 0
        #: Peers the node being driven failed to reach (see report_unreachable).
        self._unreachable: set[int] = set()
        self._faulty = False
        self._check_members_every_tick = bool(profile.member_rate or profile.member_on_election)
        #: Every configuration proposed: (index, term, membership).
        self._confs: list[tuple[int, int, Membership]] = []
        #: Ids whose removal was proposed (candidates for retirement).
        self._removed: set[int] = set()
        #: Newly elected leaders to ask for a change (member_on_election).
        self._eager: list[int] = []

    # -- trace ----------------------------------------------------------------

    def _ev(self, node: int, kind: str, what: Any) -> None:
        item = (self.now, node, kind, what)
        self.trace.append(item)
        if self.verbose:
            print(self._fmt_event(item))

    def _fmt_event(self, item: tuple[int, int, str, Any]) -> str:
        now, node, kind, what = item
        sub = self.profile.substeps
        text = _fmt_msg(what) if isinstance(what, Message) else str(what)
        who = f"n{node}" if node >= 0 else "  "
        return f"  t={now // sub:5d}.{now % sub} {who} {kind:<9} {text}"

    def replay_command(self) -> str:
        cmd = f"python -m tests.sim.simulator --seed {self.seed} --profile {self.profile.name}"
        return f"{cmd}{self.replay_hint} --verbose"

    # -- node lifecycle ---------------------------------------------------------

    def _config(self, n: SimNode, applied: int) -> Config:
        p = self.profile
        rng = Random(self.node_rng_seeds[n.id] + 7919 * n.incarnation)
        return Config(
            id=n.id,
            # A joined node knows no membership until its log or a snapshot
            # tells it (kvserver --join); the others bootstrap from config.
            peers=frozenset() if n.joined else self.peers,
            rng=rng,
            election_tick=p.election_tick,
            heartbeat_tick=p.heartbeat_tick,
            pre_vote=p.pre_vote,
            check_quorum=p.check_quorum,
            max_size_per_msg=p.max_size_per_msg,
            max_inflight_msgs=p.max_inflight_msgs,
            max_inflight_bytes=p.max_inflight_bytes,
            snapshot_chunk_size=p.snapshot_chunk_size,
            # Both ways of telling followers the commit index: eagerly (odd
            # seeds) or with the next append/heartbeat, as RaftNode does.
            broadcast_commit=self.seed % 2 == 1,
            applied=applied,
        )

    def _start(self, n: SimNode) -> None:
        """(Re)build a node from its storage: what a process restart does."""
        snap = n.storage.snapshot()
        n.sm = StateMachine.restore(snap.data)
        applied = snap.meta.index
        if n.sm.index != applied:
            raise SafetyViolation(
                "snapshot-integrity", f"node {n.id} snapshot meta {applied} vs data {n.sm.index}"
            )
        hs, _ = n.storage.initial_state()
        n.core = self.core_factory(self._config(n, applied), n.storage)
        n.proc = self.processor_factory(n.core, _Disk(self, n), _Hooks(self, n))
        n.pending_until = 0
        n.role, n.term, n.commit = n.core.role, n.core.term, n.core.log.committed
        self.checker.on_restart(n.id, hs, applied)
        self._drive(n)

    def _crash(self, n: SimNode) -> None:
        # Test hook: a storage that models non-durable writes rolls back here.
        simulate_crash = getattr(n.storage, "simulate_crash", None)
        if simulate_crash is not None:
            simulate_crash()
        n.core = None
        n.proc = None  # with it, every write not yet durable
        n.incarnation += 1
        n.restart_at = self.tick_no + self.fault_rng.randint(*self.profile.downtime)
        self.stats["crashes"] += 1
        self._ev(n.id, "CRASH", f"down until tick {n.restart_at}")

    def _restart(self, n: SimNode) -> None:
        self.stats["restarts"] += 1
        hs = n.storage.hard_state
        self._ev(
            n.id,
            "RESTART",
            f"term={hs.term} vote={hs.vote} commit={hs.commit} "
            f"log=[{n.storage.first_index()}..{n.storage.last_index()}] "
            f"snap={n.storage.snapshot().meta.index}",
        )
        self._start(n)

    # -- Ready processing -----------------------------------------------------

    def _observe(self, n: SimNode) -> None:
        """Report the node's role/term/commit to the checker (after every
        input, before its Ready is applied)."""
        core = n.core
        assert core is not None
        role, term, commit = core.role, core.term, core.log.committed
        if role is n.role and term == n.term and commit == n.commit:
            return  # nothing the checker has not seen
        ck = self.checker
        # A leader whose own removal just committed steps down in the same
        # step (dissertation 4.2.2): that last commit is still a leader's.
        was_leader = n.role is Role.LEADER and n.term == term
        if role is not n.role or term != n.term:
            self._ev(n.id, "ROLE", f"{role.value} term={term}")
            n.role = role
            n.term = term
            if role is not Role.FOLLOWER:
                # The membership before the latest, while that is uncommitted:
                # a voter whose own removal is pending may still stand.
                pending = core.membership_index > core.log.committed
                before = core.membership_at(core.membership_index - 1) if pending else None
                ck.on_campaign(n.id, role.value, term, core.membership, before)
        is_leader = role is Role.LEADER
        if was_leader and not is_leader and commit > n.commit:
            self._ev(n.id, "COMMIT", f"commit={commit} (as leader, then stepped down)")
            self._leader_commit(n, core, term, commit)
        ck.on_state(n.id, term, commit, is_leader)
        if is_leader:
            if ck.leaders.get(term) != n.id:
                self.stats["elections"] += 1
                ck.on_leader(n.id, term, self._log_view(n))
                p = self.profile
                if (self._faulty and p.member_on_election
                        and self.member_rng.random() < p.member_on_election):
                    self._eager.append(n.id)
            self._leader_commit(n, core, term, commit)
        if commit != n.commit:
            if commit > n.commit:
                self._ev(n.id, "COMMIT", f"commit={commit}")
            n.commit = commit

    def _leader_commit(self, n: SimNode, core: RaftCore, term: int, commit: int) -> None:
        """Leader ``n`` of ``term`` has commit index ``commit``."""
        term_of = self._term_of(core)
        if commit > n.commit:
            entry_term = term_of(commit)
            if entry_term is not None:
                self.checker.check_commit_quorum(
                    n.id, term, commit, entry_term, core.membership.voters, self._holds
                )
        self.checker.on_leader_commit(n.id, term, commit, term_of)

    def _holds(self, node: int, index: int, term: int) -> bool:
        """Whether ``node``'s disk holds ``index``@``term`` (or a snapshot
        covering it: snapshot integrity is checked on its own)."""
        st = self.nodes[node].storage
        if index <= st.snapshot().meta.index:
            return True
        try:
            return st.term(index) == term
        except Exception:
            return False

    @staticmethod
    def _term_of(core: RaftCore) -> Callable[[int], int | None]:
        log = core.log

        def term_of(i: int) -> int | None:
            try:
                return log.term(i)
            except Exception:
                return None

        return term_of

    def _drive(self, n: SimNode) -> None:
        """Take the node's Readys through its ``ReadyProcessor``; make the
        writes durable now or, sometimes, a few rounds later."""
        core, proc = n.core, n.proc
        assert core is not None and proc is not None
        self._observe(n)
        while True:
            while proc.take() is not None:
                if n.pending_until:
                    self.stats["pipelined_readys"] += 1  # taken while a write is in flight
                self._report_unreachable(core)
                self._observe(n)
            if not proc.has_unwritten or n.pending_until:
                return  # nothing to write, or the disk is busy: later
            if self.work_rng.random() < 0.3:
                n.pending_until = self.now + self.work_rng.randint(1, 2 * self.profile.substeps)
                self.stats["deferred_writes"] += 1
                return
            self._persist(n)

    def _persist(self, n: SimNode) -> None:
        """Write what the node has taken and make it durable at once."""
        core, proc = n.core, n.proc
        assert core is not None and proc is not None
        proc.write()
        proc.synced()
        self._report_unreachable(core)
        self._observe(n)

    def _report_unreachable(self, core: RaftCore) -> None:
        unreachable = self._unreachable
        if unreachable:
            for peer in sorted(unreachable):
                core.report_unreachable(peer)
            unreachable.clear()

    def _complete_writes(self) -> None:
        """Deferred writes whose time has come become durable."""
        for n in self.nodes:
            if n.core is None or not n.pending_until or n.pending_until > self.now:
                continue
            n.pending_until = 0
            self._ev(n.id, "SYNCED", "deferred writes")
            self._persist(n)
            self._drive(n)

    def _install(self, n: SimNode, snap: Snapshot) -> None:
        sm = StateMachine.restore(snap.data)
        self.stats["snapshots_installed"] += 1
        self._ev(n.id, "SNAP-IN", f"index={snap.meta.index} term={snap.meta.term}")
        self.checker.on_snapshot_restore(n.id, snap.meta, sm.index, sm.digest)
        n.sm = sm

    def _send(self, m: Message) -> None:
        if m.type is MessageType.SNAPSHOT:
            self.stats["snapshot_msgs"] += 1
        self.stats["sent"] += 1
        if self.nodes[m.dst].core is None:
            lost: str | None = "down"
        else:
            lost = self.net.send(m, self.now)
        if lost == "dup":
            self.stats["duplicated"] += 1
        elif lost is not None:
            self.stats["dropped"] += 1
            self._ev(m.src, f"DROP-{lost[:4]}", m)
            if lost != "loss" and self.profile.report_unreachable:
                self._unreachable.add(m.dst)

    def _deliver(self, m: Message) -> None:
        n = self.nodes[m.dst]
        if n.core is None:
            self.stats["dropped"] += 1
            return
        if self.net.blocked(m.src, m.dst):
            self.stats["dropped"] += 1
            self._ev(m.dst, "DROP-part", m)
            return
        self.stats["delivered"] += 1
        self._ev(m.dst, "RECV", m)
        n.core.step(m)
        self._drive(n)

    # -- faults and workload --------------------------------------------------

    def _leader(self) -> SimNode | None:
        """A live node that thinks it leads (the highest term if several)."""
        best: SimNode | None = None
        for n in self.nodes:
            if n.core is None or n.role is not Role.LEADER:
                continue
            if best is None or n.term > best.term:
                best = n
        return best

    def _faults(self) -> None:
        p, rng, net = self.profile, self.fault_rng, self.net
        for n in self.nodes:
            if n.core is None and not n.gone and n.restart_at <= self.tick_no:
                self._restart(n)
        if p.retire_rate:
            self._retire()
        # Without membership changes: range(p.nodes), as before they existed.
        alive = [n.id for n in self.nodes if not n.gone]
        if p.crash_rate and rng.random() < p.crash_rate:
            up = [n for n in self.nodes if n.core is not None]
            leader = self._leader()
            if p.max_down is not None:
                max_down = p.max_down
            else:  # a minority of the voters
                voters = len(leader.core.membership.voters) if leader and leader.core else p.nodes
                max_down = (voters - 1) // 2
            if len(alive) - len(up) < max_down and up:
                victim = leader if leader and rng.random() < p.leader_crash_bias else rng.choice(up)
                self._crash(victim)
        if p.partition_rate and rng.random() < p.partition_rate and len(alive) > 1:
            ids = list(alive)
            rng.shuffle(ids)
            leader = self._leader()
            if leader is not None and rng.random() < 0.5:
                # Isolate the leader with a random minority.
                ids.remove(leader.id)
                ids.insert(0, leader.id)
            k = rng.randint(1, len(ids) // 2)
            net.groups = {i: (1 if pos < k else 0) for pos, i in enumerate(ids)}
            self.stats["partitions"] += 1
            self._ev(-1, "PARTITION", f"{sorted(ids[:k])} | {sorted(ids[k:])}")
        if p.cut_rate and rng.random() < p.cut_rate and len(alive) > 1:
            a, b = rng.sample(alive, 2)
            net.cuts.add((a, b))
            self.stats["cuts"] += 1
            self._ev(-1, "CUT", f"{a} -> {b}")
        if p.heal_rate and (net.groups or net.cuts) and rng.random() < p.heal_rate:
            net.groups = {}
            net.cuts = set()
            self._ev(-1, "HEAL", "network healed")

    def _workload(self) -> None:
        p, rng = self.profile, self.work_rng
        n_props = int(p.propose_rate) + (1 if rng.random() < p.propose_rate % 1 else 0)
        for _ in range(n_props):
            self._propose(rng)
        if p.read_rate and rng.random() < p.read_rate:
            self._read(rng)
        if p.transfer_rate and rng.random() < p.transfer_rate:
            leader = self._leader()
            others = sorted(leader.core.membership.voters - {leader.id}) if (
                leader is not None and leader.core is not None) else []
            if leader is not None and leader.core is not None and others:
                to = rng.choice(others)
                self._ev(leader.id, "TRANSFER", f"to {to}")
                self.stats["transfers"] += 1
                with contextlib.suppress(NotLeader, ProposalDropped):
                    leader.core.transfer_leader(to)
                self._drive(leader)
        if p.snapshot_rate:
            for n in self.nodes:
                if n.core is not None and rng.random() < p.snapshot_rate:
                    self._app_snapshot(n, rng)
        if p.member_rate and self.member_rng.random() < p.member_rate:
            target = self._target(self.member_rng)
            if target is not None:
                self._change_membership(target)

    # -- membership changes ---------------------------------------------------

    def _pick_change(self, rng: Random, m: Membership) -> ConfChange:
        """One single-server change to ``m``, drifting toward 3..5 voters;
        one in ten is a change ``m`` cannot take (ConfChangeError)."""
        p = self.profile
        voters, learners = sorted(m.voters), sorted(m.learners)
        if rng.random() < 0.1 or not voters:
            kind = rng.randrange(3)
            if kind == 0 and m.members:
                return ConfChange(ConfChangeOp.ADD_LEARNER, rng.choice(sorted(m.members)), "dup")
            if kind == 1 and voters:
                return ConfChange(ConfChangeOp.PROMOTE, rng.choice(voters))
            return ConfChange(ConfChangeOp.REMOVE, 10_000 + rng.randrange(10))
        small = len(voters) <= 3
        options: list[tuple[str, int]] = []
        if len(self.nodes) < p.max_nodes and len(m.members) < p.max_voters + 2:
            options.append(("add", 3 if small else 1))
        if learners and len(voters) < p.max_voters:
            options.append(("promote", 4 if small else 1))
        if len(voters) > 1:
            options.append(("remove-voter", 1 if small else 3))
        if learners:
            options.append(("remove-learner", 1))
        if not options:
            return ConfChange(ConfChangeOp.PROMOTE, rng.choice(voters))
        kinds, weights = zip(*options, strict=True)
        kind = rng.choices(kinds, weights)[0]
        if kind == "add":
            new = len(self.nodes)
            return ConfChange(ConfChangeOp.ADD_LEARNER, new, f"sim:{new}")
        if kind == "promote":
            return ConfChange(ConfChangeOp.PROMOTE, rng.choice(learners))
        return ConfChange(
            ConfChangeOp.REMOVE, rng.choice(voters if kind == "remove-voter" else learners)
        )

    def _change_membership(self, n: SimNode) -> None:
        """Ask ``n`` (usually the leader) for one membership change."""
        core = n.core
        assert core is not None
        change = self._pick_change(self.member_rng, core.membership)
        # What the rules are judged against: the log before the append.
        commit = core.log.committed
        own_term = self._term_of(core)(commit) == core.term
        latest = self._latest_conf_entry(core)
        prev_conf = latest.index if latest is not None else 0
        self.stats["conf_asked"] += 1
        try:
            index = core.propose_conf_change(change)
        except NotLeader:
            outcome = "not_leader"
        except ConfChangeRefused:
            outcome = "refused"
        except ConfChangeError:
            outcome = "error"
        except ProposalDropped:
            outcome = "dropped"
        else:
            outcome = change.op.value
        self.stats[f"conf_{outcome.replace('-', '_')}"] += 1
        if outcome not in ("not_leader", "refused", "error", "dropped"):
            entry = core.log.slice(index, index + 1)[0]
            new = Membership.decode(entry.data)
            self.checker.on_conf_propose(
                n.id, core.term, index, entry.data, own_term, prev_conf, commit
            )
            self._confs.append((index, entry.term, new))
            self._ev(n.id, "CONF", f"{change} -> index {index}: {new.describe()}")
            if change.op is ConfChangeOp.ADD_LEARNER and change.node == len(self.nodes):
                self._join(change.node)
            elif change.op is ConfChangeOp.REMOVE:
                self._removed.add(change.node)
        else:
            self._ev(n.id, "CONF-NO", f"{change}: {outcome}")
        self._drive(n)

    @staticmethod
    def _latest_conf_entry(core: RaftCore) -> Entry | None:
        """The latest configuration entry in the core's log (unstable part
        included); None if there is none past its snapshot."""
        log = core.log
        first, hi = log.first_index(), log.last_index() + 1
        while hi > first:
            lo = max(first, hi - 64)
            for e in reversed(log.slice(lo, hi)):
                if e.type is EntryType.CONF_CHANGE:
                    return e
            hi = lo
        return None

    def _join(self, node: int) -> None:
        """Start the node a change just added: empty storage, no membership."""
        assert node == len(self.nodes)
        self.node_rng_seeds.append(self.member_rng.getrandbits(64))
        n = SimNode(node, self.storage_factory(), joined=True)
        self.nodes.append(n)
        self.stats["joined"] += 1
        self._ev(node, "JOIN", "new empty node")
        self._start(n)

    def _retire(self) -> None:
        """Stop for good, now and then, a node whose removal is committed.
        Committed for sure: a committed configuration that has it is
        followed by a committed one that does not (ids are never re-added)."""
        if not self._removed:
            return
        ck = self.checker
        committed = [
            m for i, t, m in sorted(self._confs, key=lambda c: c[0])
            if i <= ck.max_committed and ck.committed_terms[i] == t
        ]
        if not committed:
            return
        latest = committed[-1]
        for node in sorted(self._removed):
            n = self.nodes[node]
            if n.gone or node in latest.members:
                continue
            if not any(node in m.members for m in committed):
                continue
            if self.member_rng.random() < self.profile.retire_rate:
                if n.core is not None:
                    self._crash(n)
                n.gone = True
                self.stats["retired"] += 1
                self._ev(node, "RETIRED", "removal committed; stopped for good")

    def _target(self, rng: Random) -> SimNode | None:
        leader = self._leader()
        if leader is not None and rng.random() < 0.85:
            return leader
        up = [n for n in self.nodes if n.core is not None]
        return rng.choice(up) if up else None

    def _propose(self, rng: Random, data: bytes | None = None) -> int | None:
        n = self._target(rng)
        if n is None or n.core is None:
            return None
        if data is None:
            self._proposals += 1
            data = b"p%d" % self._proposals
        self.checker.on_propose(data)
        self.stats["proposals"] += 1
        try:
            index = n.core.propose(data)
        except (NotLeader, ProposalDropped):
            self.stats["proposals_refused"] += 1
            return None
        self._ev(n.id, "PROPOSE", f"{data!r} -> index {index}")
        self._drive(n)
        return index

    def _read(self, rng: Random) -> None:
        n = self._target(rng)
        if n is None or n.core is None:
            return
        self._reads += 1
        ctx = b"r%d" % self._reads
        self.checker.on_read_start(ctx, n.id, n.core.term, self.now / self.profile.substeps)
        try:
            n.core.read_index(ctx)
        except (NotLeader, ProposalDropped):
            self.stats["reads_refused"] += 1
            return
        self.stats["reads"] += 1
        self._ev(n.id, "READ", f"{ctx!r} at commit>={self.checker.max_committed}")
        self._drive(n)

    def _app_snapshot(self, n: SimNode, rng: Random) -> None:
        st = n.storage
        idx = n.sm.index
        if n.proc is not None and n.proc.in_flight:
            # Writes in flight: the state machine may be ahead of the disk,
            # or built from entries (a snapshot) the disk does not hold yet.
            # RaftNode's Drain.snapshot_now waits the same way.
            return
        if idx > st.last_index():
            return
        if idx - st.snapshot().meta.index < self.profile.snapshot_min_gap:
            return
        assert n.core is not None
        st.create_snapshot(idx, n.sm.snapshot(self.profile.snapshot_pad), n.core.membership_at(idx))
        upto = idx - rng.randint(0, 3)
        if upto >= st.first_index():
            st.compact(upto)
        self.stats["snapshots_created"] += 1
        self._ev(n.id, "SNAPSHOT", f"app snapshot at {idx}, log now [{st.first_index()}..]")

    # -- time -----------------------------------------------------------------

    def _tick(self, faulty: bool) -> None:
        p = self.profile
        self.now = self.tick_no * p.substeps
        if faulty:
            self._faults()
            self._workload()
        self._ev(-1, "TICK", f"tick {self.tick_no}")
        skip = p.tick_skip if faulty else 0.0
        order = list(self.nodes)
        self.fault_rng.shuffle(order)
        for n in order:
            if n.core is not None and not (skip and self.fault_rng.random() < skip):
                n.core.tick()
                self._drive(n)
        self._ask_new_leaders()
        for s in range(p.substeps):
            self.now = self.tick_no * p.substeps + s
            self._complete_writes()
            for m in self.net.due(self.now):
                self._deliver(m)
                self._ask_new_leaders()
        self.tick_no += 1
        self.stats["ticks"] += 1
        if self._check_members_every_tick:
            self._check_membership()

    def _ask_new_leaders(self) -> None:
        """member_on_election: a leader elected just now gets a change
        request in the same round (its no-op is not committed yet)."""
        while self._eager:
            n = self.nodes[self._eager.pop()]
            if n.core is not None and n.role is Role.LEADER:
                self.stats["conf_on_election"] += 1
                self._change_membership(n)

    def _check_logs(self) -> None:
        self.checker.check_log_matching(
            {n.id: self._log_view(n) for n in self.nodes if n.core is not None}
        )
        self._check_membership()

    def _check_membership(self) -> None:
        """Each live node's membership in force is the latest configuration
        in its log (else its snapshot's, else its bootstrap one), and no
        log holds two configuration entries past the highest committed
        index."""
        ck = self.checker
        top = ck.max_committed
        for n in self.nodes:
            core = n.core
            if core is None:
                continue
            log = core.log
            first, last = log.first_index(), log.last_index()
            pending = [
                e.index for e in log.slice(max(first, top + 1), last + 1)
                if e.type is EntryType.CONF_CHANGE
            ] if last > top else []
            ck.check_conf_pending(n.id, pending)
            expected, source = self._latest_conf(n)
            ck.check_membership_in_force(n.id, core.membership, expected, source)

    def _latest_conf(self, n: SimNode) -> tuple[Membership, str]:
        """The latest configuration ``n``'s log holds, found from the log
        itself (not from the core's bookkeeping), and where it was found."""
        core = n.core
        assert core is not None
        e = self._latest_conf_entry(core)
        if e is not None:
            return Membership.decode(e.data), f"entry {e.index}@t{e.term}"
        snap = core.log.unstable.snapshot or n.storage.snapshot()
        if not snap.meta.membership.empty:
            return snap.meta.membership, f"snapshot at {snap.meta.index}"
        boot = Membership() if n.joined else Membership.of(self.peers)
        return boot, "bootstrap"

    @staticmethod
    def _log_view(n: SimNode) -> LogView:
        """The node's log as its core holds it: the durable part plus the
        entries whose write is in flight (what it votes, replicates and
        applies from; a crash takes only the latter back)."""
        if n.core is None:
            st = n.storage
            first, last = st.first_index(), st.last_index()
            ents = st.entries(first, last + 1) if last >= first else []
            return LogView(first, st.term(first - 1), tuple(e.term for e in ents))
        log = n.core.log
        first, last = log.first_index(), log.last_index()
        ents = log.slice(first, last + 1) if last >= first else []
        return LogView(first, log.term(first - 1), tuple(e.term for e in ents))

    # -- phases -----------------------------------------------------------------

    def _heal(self) -> None:
        self.net.groups = {}
        self.net.cuts = set()
        self.net.drop = 0.0
        self.net.dup = 0.0
        self.net.delay = (1, 2)
        self._ev(-1, "HEAL", "all faults healed; liveness phase")
        for n in self.nodes:
            if n.core is None and not n.gone:
                self._restart(n)

    def _stable_leader(self) -> SimNode | None:
        """A leader that every member of its configuration follows."""
        leader = self._leader()
        if leader is None:
            return None
        for n in self._members(leader):
            core = n.core
            if core is None or core.leader != leader.id or core.term != leader.term:
                return None
        return leader

    def _members(self, leader: SimNode | None) -> list[SimNode]:
        """The members of ``leader``'s configuration (all nodes if none)."""
        if leader is None or leader.core is None:
            return [n for n in self.nodes if not n.gone]
        members = leader.core.membership.members
        return [n for n in self.nodes if n.id in members]

    def _liveness(self) -> None:
        bound = 10 * self.profile.election_tick
        start = self.tick_no
        while self._stable_leader() is None:
            if self.tick_no - start > bound:
                raise LivenessFailure(
                    "liveness-leader", f"no leader known to all {bound} ticks after healing"
                )
            self._tick(faulty=False)
        self._ev(-1, "LIVENESS", f"leader {self._leader().id} after {self.tick_no - start} ticks")  # type: ignore[union-attr]
        # Three fresh proposals must be applied everywhere. A proposal whose
        # leader lost office before committing it may be lost (Raft promises
        # nothing for it; a client would retry): re-propose it then.
        attempts: dict[int, list[tuple[bytes, int]]] = {k: [] for k in range(3)}
        start = self.tick_no
        # Catching up is bounded by the profile's own throttle (figure8 sends
        # one entry per APPEND with one in flight: about one entry per round
        # trip), so a node far behind at healing time gets time in proportion
        # to its backlog; a stuck pipeline still fails, just later.
        # The backlog is what the leader must still ship: its whole log past
        # the slowest node's applied index (old-term entries included: they
        # commit only along with one of the new leader's own).
        leader = self._leader()
        top = leader.core.log.last_index() if leader and leader.core else 0
        lagging = min(n.sm.index for n in self._members(leader))
        bound += 2 * max(0, max(top, self.checker.max_committed) - lagging)
        applied = self.checker.applied_payloads
        while True:
            leader = self._stable_leader()
            if leader is not None and leader.core is not None:
                for k, tries in attempts.items():
                    if any(d in applied for d, _ in tries) or any(
                        t == leader.term for _, t in tries
                    ):
                        continue
                    data = b"final%d.%d" % (k, len(tries))
                    self.checker.on_propose(data)
                    try:
                        index = leader.core.propose(data)
                    except (NotLeader, ProposalDropped):
                        break
                    tries.append((data, leader.term))
                    self._ev(leader.id, "PROPOSE", f"{data!r} -> index {index} (liveness)")
                    self._drive(leader)
            done = all(any(d in applied for d, _ in tries) for tries in attempts.values())
            if done and self._all_applied():
                break
            if self.tick_no - start > bound:
                raise LivenessFailure(
                    "liveness-commit",
                    f"proposals after healing not applied everywhere within {bound} ticks "
                    f"(attempts: {attempts}); {self._progress_summary()}",
                )
            self._tick(faulty=False)

    def _progress_summary(self) -> str:
        """The leader's view of each follower (why replication is stuck)."""
        leader = self._leader()
        if leader is None or leader.core is None:
            return "no leader"
        parts = []
        for p, pr in sorted(leader.core.status().progress.items()):
            if p != leader.id:
                parts.append(
                    f"{p}: match={pr.match} next={pr.next} {pr.state.value} inflight={pr.inflight}"
                    f" applied={self.nodes[p].sm.index}"
                )
        return f"leader {leader.id} progress: " + ", ".join(parts)

    def _all_applied(self) -> bool:
        top = self.checker.max_committed
        return all(n.sm.index >= top for n in self._members(self._stable_leader()))

    def run(self) -> SimResult:
        p = self.profile
        kind, detail = None, None
        try:
            for n in self.nodes:
                self._start(n)
            self._faulty = True
            while self.tick_no < p.ticks:
                self._tick(faulty=True)
                if self.tick_no % p.check_every == 0:
                    self._check_logs()
            self._faulty = False
            self._heal()
            self._check_logs()
            self._liveness()
            self._check_logs()
            final = self._members(self._stable_leader())
            self.stats["final_voters"] += sum(
                1 for n in final if n.core is not None and n.id in n.core.membership.voters
            )
            # Non-members still running through the liveness phase: they did
            # not keep the cluster from electing and committing.
            self.stats["outsiders_running"] += sum(
                1 for n in self.nodes if n.core is not None and n not in final
            )
            self.checker.check_final(
                {n.id: n.sm.index for n in final}, {n.id: n.sm.digest for n in final}
            )
        except (SafetyViolation, LivenessFailure) as v:
            kind, detail = v.invariant, v.detail
        except Exception as e:  # a panic inside the core is a finding too
            kind = "core-exception"
            detail = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exception(e)[-6:])
        self.stats["max_committed"] = self.checker.max_committed
        self.stats["reads_released"] = self.checker.reads_released
        if kind is None:
            return SimResult(self.seed, p.name, True, stats=self.stats)
        return SimResult(
            self.seed, p.name, False, kind, detail, self._report(kind, detail or ""), self.stats
        )

    def _report(self, kind: str, detail: str) -> str:
        lines = [
            f"VIOLATION [{kind}] seed={self.seed} profile={self.profile.name} "
            f"at tick {self.now // self.profile.substeps}",
            f"  {detail}",
            f"  replay: {self.replay_command()}",
            "  nodes:",
        ]
        for n in self.nodes:
            if n.core is None:
                when = "for good" if n.gone else f"restart at tick {n.restart_at}"
                lines.append(f"    n{n.id}: DOWN ({when})")
                continue
            st = n.storage
            lines.append(
                f"    n{n.id}: {n.role.value} term={n.term} commit={n.commit} "
                f"applied={n.sm.index} log=[{st.first_index()}..{st.last_index()}] "
                f"snap={st.snapshot().meta.index} "
                f"membership={n.core.membership.describe()}@{n.core.membership_index}"
            )
        lines.append(f"  leaders by term: {dict(sorted(self.checker.leaders.items()))}")
        lines.append(f"  last {len(self.trace)} events:")
        lines.extend(self._fmt_event(item) for item in self.trace)
        lines.append(f"  replay: {self.replay_command()}")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def run_seed(
    seed: int,
    profile: FaultProfile | str = "reliable",
    *,
    core_factory: CoreFactory | None = None,
    storage_factory: StorageFactory = MemoryStorage,
    processor_factory: ProcessorFactory | None = None,
    trace_len: int = 80,
    verbose: bool = False,
    replay_hint: str = "",
    rule_checks: bool = True,
) -> SimResult:
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    sim = Simulator(
        seed,
        prof,
        core_factory=core_factory,
        storage_factory=storage_factory,
        processor_factory=processor_factory,
        trace_len=trace_len,
        verbose=verbose,
        replay_hint=replay_hint,
        rule_checks=rule_checks,
    )
    return sim.run()


def run_seeds(
    seeds: Iterable[int],
    profile: FaultProfile | str = "reliable",
    *,
    stop_at_first: bool = False,
    **kwargs: Any,
) -> tuple[list[SimResult], Counter[str]]:
    """Run many seeds; returns the failures and the summed stats."""
    failures: list[SimResult] = []
    total: Counter[str] = Counter()
    for seed in seeds:
        r = run_seed(seed, profile, **kwargs)
        total.update(r.stats)
        total["seeds"] += 1
        if not r.ok:
            failures.append(r)
            if stop_at_first:
                break
    return failures, total


def _load(path: str) -> Any:
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.sim.simulator", description="Deterministic Raft cluster simulator"
    )
    ap.add_argument("--seed", type=int, default=None, help="replay one seed")
    ap.add_argument("--seeds", default="0-99", help="range A-B of seeds (when no --seed)")
    ap.add_argument("--profile", default="reliable", choices=sorted(PROFILES))
    ap.add_argument("--ticks", type=int, default=None, help="override the faulty-phase length")
    ap.add_argument("--nodes", type=int, default=None, help="override the cluster size")
    ap.add_argument("--verbose", action="store_true", help="print every event")
    ap.add_argument("--trace", type=int, default=80, help="events kept for a failure report")
    ap.add_argument("--core", default=None, help="module:Class of the core (bug injection)")
    ap.add_argument("--storage", default=None, help="module:Class of the storage")
    ap.add_argument("--processor", default=None,
                    help="module:Class of the Ready processor (bug injection)")
    ap.add_argument("--no-rule-checks", action="store_true",
                    help="check the membership rules' consequences only, not the rules")
    args = ap.parse_args(argv)

    prof = PROFILES[args.profile]
    if args.ticks is not None:
        prof = replace(prof, ticks=args.ticks)
    if args.nodes is not None:
        prof = replace(prof, nodes=args.nodes)
    hint = ""
    kwargs: dict[str, Any] = {"trace_len": args.trace}
    if args.core:
        kwargs["core_factory"] = _load(args.core)
        hint += f" --core {args.core}"
    if args.storage:
        kwargs["storage_factory"] = _load(args.storage)
        hint += f" --storage {args.storage}"
    if args.processor:
        kwargs["processor_factory"] = _load(args.processor)
        hint += f" --processor {args.processor}"
    if args.ticks is not None:
        hint += f" --ticks {args.ticks}"
    if args.nodes is not None:
        hint += f" --nodes {args.nodes}"
    if args.no_rule_checks:
        kwargs["rule_checks"] = False
        hint += " --no-rule-checks"
    kwargs["replay_hint"] = hint

    if args.seed is not None:
        r = run_seed(args.seed, prof, verbose=args.verbose, **kwargs)
        print(r.report if not r.ok else f"seed {args.seed} ({prof.name}): OK")
        print("stats:", dict(sorted(r.stats.items())))
        return 0 if r.ok else 1
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    t0 = time.perf_counter()
    failures, total = run_seeds(seeds, prof, **kwargs)
    dt = time.perf_counter() - t0
    for f in failures:
        print(f.report, end="\n\n")
    print(
        f"{len(seeds)} seeds ({prof.name}) in {dt:.1f}s ({len(seeds) / dt:.1f} seeds/s): "
        f"{len(failures)} violation(s); failing seeds: {[f.seed for f in failures]}"
    )
    print("stats:", dict(sorted(total.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
