"""RaftCore: the Raft consensus algorithm as a pure, deterministic state machine.

In the style of etcd-io/raft: no clocks, sockets, threads or files. Inputs are
``tick()`` (logical time), ``step(message)`` (a message from a peer) and the
client calls ``propose``, ``read_index``, ``transfer_leader``, ``campaign``.
Every output -- state to persist, messages to send, entries to apply, reads
to release -- is collected and handed to the driver by ``ready()``; the
driver acknowledges with ``advance()``. See ``Ready`` for the ordering rule.

References in comments: "paper" = Ongaro & Ousterhout, *In Search of an
Understandable Consensus Algorithm* (extended version); "dissertation" =
Ongaro, *Consensus: Bridging Theory and Practice* (2014).

Every message leaves through ``ready()`` -- none is sent "directly" -- and
the core itself sorts them: ``Ready.messages`` may leave at once,
``Ready.messages_after_persist`` (vote grants, append acknowledgements) only
once that Ready's writes are durable, so a driver that follows ``Ready``'s
one ordering rule can never announce state that a crash could take back.
The leader builds its APPENDs lazily, when ``ready()`` is called: all
proposals made since the previous Ready travel in one batch per follower
(bounded by ``max_size_per_msg``; pipelined up to the inflight limits).

Structure: ``step`` handles terms once for all roles, then the role's
handler (``self._step`` is ``_step_follower``, ``_step_candidate`` or
``_step_leader``; ``self._tick`` likewise). Rules that tests may want to
break on purpose live in small overridable methods: ``_maybe_commit`` (the
commit rule) and ``_can_grant_vote`` (the vote rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Final

from raft.log import RaftLog
from raft.membership import ConfChange, ConfChangeError, Membership
from raft.progress import Progress, ProgressState
from raft.quorum import VoteResult, committed_index, has_quorum, vote_result
from raft.read_only import ReadOnly
from raft.storage import CompactedError, LogStorage, UnavailableError
from raft.types import (
    NONE,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    entries_size,
)

__all__ = [
    "TRANSFER_CONTEXT",
    "ConfChangeError",
    "ConfChangeRefused",
    "Config",
    "NotLeader",
    "PeerStatus",
    "ProposalDropped",
    "RaftCore",
    "Ready",
    "Status",
]

#: ``context`` of a VOTE sent because of a leadership transfer (TIMEOUT_NOW):
#: voters must not ignore it because of the leader lease (dissertation 3.10).
TRANSFER_CONTEXT = b"transfer"


class MT:
    """``MessageType``'s members, as plain class attributes: the core
    compares message types dozens of times per operation, and on Python
    3.11 every attribute lookup on an enum class is several times slower
    (``EnumType`` defines ``__getattr__``). Same objects, same names."""

    APPEND: Final = MessageType.APPEND
    APPEND_RESPONSE: Final = MessageType.APPEND_RESPONSE
    VOTE: Final = MessageType.VOTE
    VOTE_RESPONSE: Final = MessageType.VOTE_RESPONSE
    PRE_VOTE: Final = MessageType.PRE_VOTE
    PRE_VOTE_RESPONSE: Final = MessageType.PRE_VOTE_RESPONSE
    HEARTBEAT: Final = MessageType.HEARTBEAT
    HEARTBEAT_RESPONSE: Final = MessageType.HEARTBEAT_RESPONSE
    SNAPSHOT: Final = MessageType.SNAPSHOT
    SNAPSHOT_RESPONSE: Final = MessageType.SNAPSHOT_RESPONSE
    TIMEOUT_NOW: Final = MessageType.TIMEOUT_NOW


assert {k: v for k, v in vars(MT).items() if k.isupper()} == dict(MessageType.__members__)

#: Messages that promise something about this node's disk: they leave only
#: once the Ready that carries them is durable (``Ready`` rule 3; etcd's
#: ``msgsAfterAppend``). Everything else may leave at once.
_AFTER_PERSIST: Final = frozenset(
    {MessageType.APPEND_RESPONSE, MessageType.VOTE_RESPONSE, MessageType.PRE_VOTE_RESPONSE}
)

#: Looked up once, for the same reason as ``MT``: compared on every
#: proposal, Ready and acknowledgement.
_LEADER: Final = Role.LEADER
_NORMAL: Final = EntryType.NORMAL
_CONF_CHANGE: Final = EntryType.CONF_CHANGE


class NotLeader(Exception):
    """This node is not the leader; ``leader`` is a hint (``NONE`` if unknown)."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader refuses proposals for now (a leadership transfer is under way)."""


class ConfChangeRefused(Exception):
    """The leader cannot take a membership change *yet*: the previous change
    is not committed, or no entry of its own term is (dissertation 4.1 and
    Ongaro's 2015 correction). Retrying later may succeed; a change that
    can never apply raises ``ConfChangeError`` instead."""


@dataclass(frozen=True)
class Config:
    id: int
    #: The bootstrap voters, this node included: the membership until the
    #: log or a snapshot holds one (then theirs is used, and this is ignored).
    peers: frozenset[int]
    #: Injected randomness; the election timeout is drawn from
    #: ``[election_tick, election_tick + election_jitter)`` (paper 5.2).
    rng: Random
    election_tick: int = 10
    #: Width of the random range; None means ``election_tick`` (etcd's
    #: ``[election_tick, 2 * election_tick)``).
    election_jitter: int | None = None
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    #: Bound on entry bytes per APPEND (batching).
    max_size_per_msg: int = 1 << 20
    #: Send the new commit index to followers at once, in otherwise empty
    #: appends (etcd does). Off, it rides on the next append or heartbeat
    #: (at most ``heartbeat_tick`` later): followers apply a little later,
    #: and sequential writes cost half the messages. Safety is the same
    #: either way; a follower's commit only matters for what it applies.
    broadcast_commit: bool = True
    #: Pipelining bounds per follower in REPLICATE state.
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 32 << 20
    #: InstallSnapshot chunk bytes.
    snapshot_chunk_size: int = 1 << 20
    #: Last applied index on restart (entries up to it are not handed out again).
    applied: int = 0
    #: The bootstrap membership with learners and addresses; when set it
    #: takes the place of ``peers``.
    membership: Membership | None = None

    def bootstrap_membership(self) -> Membership:
        return self.membership if self.membership is not None else Membership.of(self.peers)

    def __post_init__(self) -> None:
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if self.election_jitter is not None and self.election_jitter <= 0:
            raise ValueError("election_jitter must be positive")
        if self.max_inflight_msgs <= 0 or self.snapshot_chunk_size <= 0:
            raise ValueError("max_inflight_msgs and snapshot_chunk_size must be positive")


@dataclass(frozen=True, slots=True)
class Ready:
    """What the driver must do. The whole ordering rule of Raft's I/O is
    here; a driver that keeps it needs to know nothing else of Raft
    (``raft.ready_processor.ReadyProcessor`` is the one that does):

    1. ``messages`` may be sent at once, even before anything of this Ready
       is written: they promise nothing about this node's disk (a leader's
       appends and heartbeats, dissertation 10.2.1; vote requests, whose
       sender's own vote counts only once durable, see 4).
    2. ``hard_state``, ``entries`` and ``snapshot`` are written with
       ``storage.save``, Readys in the order they were taken; then, if
       ``must_sync``, made durable with ``storage.sync()`` (one sync may
       cover several Readys: group commit).
    3. Only once this Ready's writes are durable may
       ``messages_after_persist`` be sent: append acknowledgements and vote
       grants are promises that this state survives a crash (paper Figure
       2: "respond after persisting"). A message addressed to this node
       itself (a candidate's own vote) is stepped back into the core.
    4. ``snapshot`` is restored into the state machine and
       ``committed_entries`` applied, in Ready order, at once: committed
       entries are on a quorum's disks already (etcd applies while its WAL
       writes too), even if this node's own write of them is still in
       flight. (Waiting for it, as etcd-io/raft does with asynchronous
       storage writes, cost a sixth of the throughput at 128 writes in
       flight; a state machine kept on disk that is ahead of the log after
       a crash is handled at start instead, see
       ``raft.snapshotter.recover_state_machine``.) Each of
       ``read_states`` is served once the applied index reaches its
       ``index`` (dissertation 6.4).
    5. ``advance(rd)`` with this very object, in Ready order, once 2-4 are
       done for it. Only then does the core count what was written: the
       leader's own entries toward commit (paper 5.3), a candidate's own
       vote toward its election.

    ``ready()`` may be called again before the last Ready is advanced (its
    entries are not handed out twice): a leader keeps replicating, and
    everyone keeps applying, while a slow write is in flight.
    """

    #: Leader/role, if changed since the last Ready.
    soft_state: SoftState | None = None
    #: Term/vote/commit to persist, if changed since the last Ready.
    hard_state: HardState | None = None
    #: Entries to persist; ``storage.save`` truncates any stored suffix from
    #: ``entries[0].index`` on (it conflicted with the leader).
    entries: tuple[Entry, ...] = ()
    #: A snapshot received from the leader: persist it, restore the state machine.
    snapshot: Snapshot | None = None
    #: May leave now (rule 1).
    messages: tuple[Message, ...] = ()
    #: May leave only once this Ready's writes are durable (rule 3).
    messages_after_persist: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    #: The membership in force, if it changed since the last Ready (a
    #: configuration entry was appended, truncated away or restored from a
    #: snapshot): the driver learns new members' addresses from it.
    membership: Membership | None = None
    #: The writes must be fsynced before rule 3: new entries, a snapshot, or
    #: a new term or vote. A commit index alone need not be (etcd MustSync):
    #: it is recomputed from a quorum after a crash.
    must_sync: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.messages_after_persist
            or self.committed_entries
            or self.read_states
            or self.membership
        )


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState
    recent_active: bool
    inflight: int
    learner: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    role: Role
    leader: int
    commit: int
    applied: int
    last_index: int
    first_index: int
    #: Leader only: what it knows about each member, learners included
    #: (empty otherwise).
    progress: dict[int, PeerStatus] = field(default_factory=dict)
    lead_transferee: int = NONE
    membership: Membership = field(default_factory=Membership)
    #: Index of the configuration entry ``membership`` comes from (0 or the
    #: snapshot's index when it comes from there); committed once
    #: ``commit`` reaches it.
    membership_index: int = 0


@dataclass(slots=True)
class _SnapshotReceive:
    """Follower side of a chunked InstallSnapshot: the chunks so far."""

    meta: SnapshotMeta
    data: bytearray


class RaftCore:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        self._cfg = config
        self._id = config.id
        self._rng = config.rng
        hard_state, snap_membership = storage.initial_state()
        self.log = RaftLog(storage)
        # The membership in force is the latest configuration in the log,
        # committed or not (dissertation 4.1); before any, the snapshot's;
        # before any snapshot, the bootstrap one. ``_confs`` keeps each of
        # them with its (index, term), oldest first, so that a truncated
        # configuration entry can be rolled back and a snapshot at any
        # applied index can record the membership of its time.
        snap_meta = storage.snapshot().meta
        base = snap_membership if not snap_membership.empty else config.bootstrap_membership()
        self._confs: list[tuple[int, int, Membership]] = [(snap_meta.index, snap_meta.term, base)]
        if self.log.last_index() >= self.log.first_index():
            for e in self.log.slice(self.log.first_index(), self.log.last_index() + 1):
                if e.type is _CONF_CHANGE:
                    self._confs.append((e.index, e.term, Membership.decode(e.data)))
        self._membership = self._confs[-1][2]
        #: The membership the last Ready reported (see ``Ready.membership``).
        self._reported_membership = self._membership
        self.progress: dict[int, Progress] = {}

        self._term = 0
        self._vote = NONE
        self._leader = NONE
        self._role = Role.FOLLOWER
        self._step: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election

        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = config.election_tick
        self._votes: dict[int, bool] = {}
        self._lead_transferee = NONE

        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        #: Responses queued so far (see ``step``'s return value).
        self._replies = 0
        self._read_states: list[ReadState] = []
        self._read_only = ReadOnly()
        #: Reads that arrived before the leader committed an entry of its term.
        self._pending_reads: list[bytes] = []
        self._snap_recv: _SnapshotReceive | None = None
        #: Lazy broadcast (flushed by ready()): new entries to send / a commit
        #: index to announce. Proposals between two Readys share one APPEND.
        self._bcast_entries = False
        self._bcast_commit = False

        # Restore (paper Figure 2: currentTerm, votedFor and the log are
        # persistent; commit is persisted as an optimisation).
        if hard_state.commit > self.log.last_index():
            raise RuntimeError(
                f"hard state commit {hard_state.commit} is beyond the last index "
                f"{self.log.last_index()}: storage lost committed entries"
            )
        # A snapshot holds only committed entries; its index may be ahead of
        # the persisted commit (a leader applies what followers' acks commit
        # before its next hard state write).
        # Applied entries are committed too: a state machine kept on disk
        # may have applied entries whose commit index was never persisted.
        self.log.committed = max(
            self.log.committed, hard_state.commit, storage.snapshot().meta.index,
            min(config.applied, self.log.last_index()),
        )
        self._become_follower(hard_state.term, NONE)
        self._vote = hard_state.vote
        if config.applied > 0:
            self.log.applied_to(max(config.applied, self.log.applied))
        self._prev_soft = SoftState(self._leader, self._role)
        self._prev_hard = HardState(self._term, self._vote, self.log.committed)

    # -- read-only properties -------------------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> int:
        return self._vote

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader(self) -> int:
        return self._leader

    @property
    def peers(self) -> frozenset[int]:
        """The voters of the membership in force."""
        return self._membership.voters

    @property
    def membership(self) -> Membership:
        """The membership in force: the latest in the log, even uncommitted."""
        return self._membership

    @property
    def membership_index(self) -> int:
        """Index of the entry ``membership`` comes from (or of the snapshot
        that holds it; 0 for the bootstrap membership)."""
        return self._confs[-1][0]

    def configurations(self) -> list[tuple[int, Membership]]:
        """The configurations this node holds, oldest first, as (index,
        membership): the one in force at its snapshot (or the bootstrap
        one), then each configuration entry of its log."""
        return [(index, membership) for index, _term, membership in self._confs]

    def membership_at(self, index: int) -> Membership:
        """The membership as of log index ``index``: what a snapshot taken at
        ``index`` records."""
        for conf_index, _term, membership in reversed(self._confs):
            if conf_index <= index:
                return membership
        return self._confs[0][2]

    @property
    def config(self) -> Config:
        return self._cfg

    @property
    def lead_transferee(self) -> int:
        return self._lead_transferee

    def __repr__(self) -> str:
        return (
            f"RaftCore(id={self._id}, term={self._term}, role={self._role.value}, "
            f"leader={self._leader}, commit={self.log.committed}, last={self.log.last_index()})"
        )

    # -- public inputs ----------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick()

    def campaign(self) -> None:
        """Start an election now (with pre-vote if configured)."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the leader's log; returns the index it gets.
        Raises NotLeader / ProposalDropped. The entry is committed once a
        majority (the leader's own disk included) has persisted it."""
        if self._role is not _LEADER:
            raise NotLeader(self._leader)
        if self._lead_transferee != NONE:
            # Dissertation 3.10: the old leader stops accepting client
            # requests while it hands over.
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")
        return self._append_entry(data, _NORMAL)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append the membership that ``change`` makes of the current one;
        returns its index. It is in force on this leader at once, and on
        every node once in its log (dissertation 4.1); it is done when
        committed. Learners receive the log but neither vote nor count
        toward any majority.

        Raises ``NotLeader``, ``ProposalDropped`` (a transfer is under way),
        ``ConfChangeRefused`` (not yet: see ``_may_change_membership``) or
        ``ConfChangeError`` (the change does not fit the membership)."""
        if self._role is not _LEADER:
            raise NotLeader(self._leader)
        if self._lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")
        pending = self._confs[-1][0]
        if pending > self.log.committed:
            # One change at a time: two uncommitted single-server changes
            # may together be a two-server change, whose old and new
            # majorities need not overlap (dissertation 4.1).
            raise ConfChangeRefused(
                f"the previous membership change (log index {pending}) is not committed yet"
            )
        if not self._may_change_membership():
            raise ConfChangeRefused(
                "this leader has not yet committed an entry of its own term"
            )
        new = self._membership.applied(change)
        index = self._append_entry(new.encode(), _CONF_CHANGE)
        self._adopt_conf(index, self._term, new)
        return index

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read (dissertation 6.4). A ``ReadState``
        with this ``context`` appears in a later Ready, unless leadership is
        lost first (then the request is silently dropped)."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if not self._committed_in_current_term():
            # 6.4 step 1: the leader's commit index is only known to be
            # current once an entry of its own term is committed.
            self._pending_reads.append(context)
            return
        self._start_reads([context])

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to ``to`` (dissertation 3.10)."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if to not in self._membership.voters:
            raise ValueError(f"{to} is not a voter")
        if to == self._id or to == self._lead_transferee:
            return
        self._lead_transferee = to
        # The transfer must finish within an election timeout or is aborted.
        self._election_elapsed = 0
        pr = self.progress[to]
        if pr.match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append_all(to, send_if_empty=True)

    def report_snapshot_failed(self, peer: int) -> None:
        """The driver could not deliver the snapshot ``peer`` was being sent
        (etcd's ``ReportSnapshot`` with a failure): probe it again, and if
        it still needs a snapshot, send the newest one. (Resending the one
        that failed may fail forever: a newer snapshot replaces its file.)"""
        pr = self.progress.get(peer)
        if self._role is _LEADER and pr is not None and pr.state is ProgressState.SNAPSHOT:
            pr.pending_snapshot = 0
            pr.become_probe()

    def report_unreachable(self, peer: int) -> None:
        """The driver failed to send to ``peer``: stop pipelining to it."""
        pr = self.progress.get(peer)
        if self._role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def step(self, m: Message) -> bool:
        """Handle a message from a peer. Terms first (paper 5.1, Figure 2
        "Rules for all servers"), then the role's handler.

        For a request with a ``reply_to`` id: True if the core answered it
        (the answer, carrying the same id, is in a later Ready), False if it
        was ignored (a stale or lease-protected request: no answer will
        come). Meaningless otherwise."""
        replies = self._replies
        self._step_message(m)
        return self._replies != replies

    def _step_message(self, m: Message) -> None:
        if m.term > self._term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self._cfg.check_quorum
                    and self._leader != NONE
                    and self._election_elapsed < self._cfg.election_tick
                )
                if in_lease and not force:
                    # Dissertation 4.2.3: a server that heard from a live
                    # leader within the minimum election timeout ignores vote
                    # requests (neither grants nor updates its term), so a
                    # removed or partitioned server cannot disrupt the cluster.
                    return
            if m.type is MT.PRE_VOTE:
                pass  # dissertation 9.6: pre-votes never change terms
            elif m.type is MT.PRE_VOTE_RESPONSE and not m.reject:
                pass  # granted pre-votes carry the proposed term; we bump on quorum
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self._term:
            self._step_stale(m)
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        else:
            self._step(m)

    # -- Ready / advance ----------------------------------------------------------

    def has_ready(self) -> bool:
        # Called on every wakeup of the driver, so written as early returns,
        # most frequent first; "nothing to do" is the path that runs them all.
        if self._msgs or self._msgs_after_persist or self._read_states:
            return True
        if self._membership is not self._reported_membership:
            return True
        if (self._bcast_entries or self._bcast_commit) and self._role is _LEADER:
            return True
        log = self.log
        if log.unstable.has_next():
            return True
        soft, hard = self._prev_soft, self._prev_hard
        if (
            soft.leader != self._leader
            or soft.role is not self._role
            or hard.term != self._term
            or hard.vote != self._vote
            or hard.commit != log.committed
        ):
            return True
        return log.has_next_committed_entries()

    def ready(self) -> Ready:
        self._flush_broadcast()
        # New SoftState / HardState values only when a field changed (field
        # by field, so that the usual "unchanged" costs no object).
        soft: SoftState | None = None
        prev_soft = self._prev_soft
        if prev_soft.leader != self._leader or prev_soft.role is not self._role:
            soft = self._prev_soft = SoftState(self._leader, self._role)
        hard: HardState | None = None
        must_sync = False
        prev_hard = self._prev_hard
        if (
            prev_hard.term != self._term
            or prev_hard.vote != self._vote
            or prev_hard.commit != self.log.committed
        ):
            must_sync = prev_hard.term != self._term or prev_hard.vote != self._vote
            hard = self._prev_hard = self._hard_state()
        unstable = self.log.unstable
        entries = tuple(unstable.next_entries())
        snapshot = unstable.next_snapshot()
        unstable.accept_in_progress()
        committed = tuple(self.log.next_committed_entries())
        if committed:
            self.log.accept_applying(committed[-1].index)
        membership: Membership | None = None
        if self._membership is not self._reported_membership:
            membership = self._reported_membership = self._membership
        rd = Ready(
            soft_state=soft,
            hard_state=hard,
            entries=entries,
            snapshot=snapshot,
            messages=tuple(self._msgs),
            messages_after_persist=tuple(self._msgs_after_persist),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            must_sync=must_sync or bool(entries) or snapshot is not None,
            membership=membership,
        )
        self._msgs = []
        self._msgs_after_persist = []
        self._read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.meta.index)
            self.log.applied_to(max(rd.snapshot.meta.index, self.log.applied))
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries and rd.committed_entries[-1].index > self.log.applied:
            self.log.applied_to(rd.committed_entries[-1].index)
        if self._role is _LEADER and (rd.entries or rd.snapshot is not None):
            # The leader's own disk counts toward the majority only once the
            # entries are durable: "fsync before acknowledge" (paper 5.3).
            self_pr = self.progress[self._id]
            if self_pr.maybe_update(self.log.persisted_index()):
                self._commit_if_possible()

    def status(self) -> Status:
        progress: dict[int, PeerStatus] = {}
        if self._role is Role.LEADER:
            learners = self._membership.learners
            progress = {
                p: PeerStatus(pr.match, pr.next, pr.state, pr.recent_active, len(pr.inflights),
                              p in learners)
                for p, pr in self.progress.items()
            }
        return Status(
            id=self._id,
            term=self._term,
            vote=self._vote,
            role=self._role,
            leader=self._leader,
            commit=self.log.committed,
            applied=self.log.applied,
            last_index=self.log.last_index(),
            first_index=self.log.first_index(),
            progress=progress,
            lead_transferee=self._lead_transferee,
            membership=self._membership,
            membership_index=self._confs[-1][0],
        )

    # -- overridable rules --------------------------------------------------------

    def _maybe_commit(self) -> bool:
        """Advance the commit index to the highest index stored on a majority,
        but only if that entry is from the current term (paper 5.4.2, Figure
        8: counting replicas does not commit entries of earlier terms; they
        are committed indirectly by Log Matching)."""
        index = committed_index(
            self._membership.voters, {p: pr.match for p, pr in self.progress.items()}
        )
        if index <= self.log.committed or self.log.term(index) != self._term:
            return False
        self.log.commit_to(index)
        return True

    def _can_grant_vote(self, m: Message) -> bool:
        """Paper Figure 2, RequestVote receiver rule 2: grant if we have not
        voted for someone else this term (and know of no leader, etcd), and
        the candidate's log is at least as up-to-date as ours (5.4.1). A
        pre-vote for a later term does not count our own vote (9.6)."""
        can_vote = (
            self._vote == m.src
            or (self._vote == NONE and self._leader == NONE)
            or (m.type is MT.PRE_VOTE and m.term > self._term)
        )
        return can_vote and self.log.is_up_to_date(m.index, m.log_term)

    def _may_change_membership(self) -> bool:
        """A leader proposes a membership change only once it has committed
        an entry of its own term (Ongaro, raft-dev, 2015: without this rule a
        leader elected under one configuration can append a change that, with
        a change of a previous term's leader still in other logs, lets two
        disjoint majorities decide; hashicorp/raft and etcd-io/raft keep the
        same rule). The new leader's no-op entry makes this quick."""
        return self._committed_in_current_term()

    # -- role transitions ---------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = NONE
        self._leader = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        # Paper 5.2: randomized timeouts make split votes rare.
        jitter = self._cfg.election_jitter or self._cfg.election_tick
        self._randomized_election_timeout = self._cfg.election_tick + self._rng.randrange(jitter)
        self._lead_transferee = NONE
        self._votes = {}
        self._read_only.reset()
        self._pending_reads = []
        self._bcast_entries = self._bcast_commit = False
        last = self.log.last_index()
        self.progress = {}
        for p in sorted(self._membership.members | {self._id}):
            pr = Progress(last + 1, self._cfg.max_inflight_msgs, self._cfg.max_inflight_bytes)
            if p == self._id:
                pr.match = self.log.persisted_index()
                pr.recent_active = True
            self.progress[p] = pr

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self._leader = leader
        self._role = Role.FOLLOWER
        self._step = self._step_follower
        self._tick = self._tick_election

    def _become_pre_candidate(self) -> None:
        # Dissertation 9.6: no term change, no vote cast; just ask.
        if self._role is Role.LEADER:
            raise RuntimeError("leader cannot become pre-candidate")
        self._votes = {}
        self._leader = NONE
        self._role = Role.PRE_CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def _become_candidate(self) -> None:
        if self._role is Role.LEADER:
            raise RuntimeError("leader cannot become candidate")
        # Paper 5.2: increment currentTerm, vote for self.
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def _become_leader(self) -> None:
        if self._role is Role.FOLLOWER:
            raise RuntimeError("follower cannot become leader directly")
        self._reset(self._term)
        self._leader = self._id
        self._role = Role.LEADER
        self._step = self._step_leader
        self._tick = self._tick_heartbeat
        self.progress[self._id].become_replicate()
        # Paper 5.4.2 / dissertation 6.4: an entry of the new term, so that
        # earlier entries and the ReadIndex baseline get committed promptly.
        self._append_entry(b"", EntryType.NOOP)

    # -- elections ----------------------------------------------------------------

    def _promotable(self) -> bool:
        # Learners and removed servers never campaign (dissertation 4.2.1,
        # 4.2.2); a learner still answers vote requests, since a promotion
        # may be committed before the learner has it in its log.
        if self._id in self._membership.voters:
            return True
        # ... except a voter whose removal is in its log but not committed:
        # it may be the only one that can finish it. A leader of voters
        # {a, b} that appended its own removal and lost office before it
        # committed holds the longest log, so b (under {a, b}) cannot win
        # without its vote, which it refuses. It campaigns under the new
        # configuration (its own vote does not count there), is elected by
        # b, commits its removal and steps down.
        confs = self._confs
        return (
            len(confs) > 1
            and confs[-1][0] > self.log.committed
            and self._id in confs[-2][2].voters
        )

    def _hup(self, transfer: bool) -> None:
        if self._role is Role.LEADER or not self._promotable():
            return
        if self._cfg.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self._term + 1
        else:
            self._become_candidate()
            vote_type, term = MT.VOTE, self._term
        if not pre_vote:
            # Our own vote counts only once it is durable (etcd does the
            # same): it comes back through Ready.messages_after_persist. A
            # vote counted before a crash could take it back is how a node
            # votes twice in one term.
            self._send(Message(MT.VOTE_RESPONSE, self._id, self._id, term))
        elif self._poll(self._id, True) is VoteResult.WON:
            # Single-node cluster: our own pre-vote (it promises nothing) is
            # a majority.
            self._campaign(pre_vote=False, transfer=transfer)
            return
        last = self.log.last_index()
        last_term = self.log.last_term()
        ctx = TRANSFER_CONTEXT if transfer else b""
        for p in sorted(self._membership.voters):
            if p != self._id:
                self._send(
                    Message(
                        vote_type, self._id, p, term, log_term=last_term, index=last, context=ctx
                    )
                )

    def _poll(self, peer: int, granted: bool) -> VoteResult:
        self._votes.setdefault(peer, granted)
        return vote_result(self._membership.voters, self._votes)

    def _handle_vote_request(self, m: Message) -> None:
        resp = MT.VOTE_RESPONSE if m.type is MT.VOTE else MT.PRE_VOTE_RESPONSE
        if self._can_grant_vote(m):
            # A granted pre-vote answers with the proposed term, so that the
            # pre-candidate does not drop it as stale (dissertation 9.6).
            self._send(Message(resp, self._id, m.src, m.term, reply_to=m.reply_to))
            if m.type is MT.VOTE:
                self._election_elapsed = 0
                self._vote = m.src
        else:
            self._send(Message(resp, self._id, m.src, self._term, reject=True, reply_to=m.reply_to))

    # -- ticks ------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._cfg.election_tick:
            self._election_elapsed = 0
            if self._cfg.check_quorum:
                # Dissertation 6.2: a leader that cannot reach a majority
                # within an election timeout steps down.
                active = [p for p, pr in self.progress.items() if pr.recent_active]
                if not has_quorum(self._membership.voters, active):
                    self._become_follower(self._term, NONE)
                    return
                for p, pr in self.progress.items():
                    pr.recent_active = p == self._id
            # Dissertation 3.10: abort a transfer that did not finish in time.
            self._lead_transferee = NONE
        if self._heartbeat_elapsed >= self._cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._read_only.last_pending_context())
        self._tick_snapshot_resend()

    def _tick_snapshot_resend(self) -> None:
        # A lost chunk (or its answer) is detected by silence: resend from
        # the last acknowledged offset after half an election timeout (and at
        # least two heartbeat intervals).
        limit = max(2 * self._cfg.heartbeat_tick, self._cfg.election_tick // 2)
        for p, pr in self.progress.items():
            if p != self._id and pr.state is ProgressState.SNAPSHOT:
                pr.snap_idle_ticks += 1
                if pr.snap_idle_ticks >= limit:
                    self._send_snapshot_chunk(p, pr)

    # -- stepping per role ---------------------------------------------------------

    def _step_stale(self, m: Message) -> None:
        """A message from an older term (paper 5.1: rejected)."""
        if (self._cfg.check_quorum or self._cfg.pre_vote) and m.type in (MT.APPEND, MT.HEARTBEAT):
            # A leader partitioned away keeps its old term: with check-quorum
            # or pre-vote our term may never reach it through a vote request,
            # so tell it directly, or it would never step down.
            self._send(Message(MT.APPEND_RESPONSE, self._id, m.src, self._term,
                reply_to=m.reply_to))
        elif m.type is MT.PRE_VOTE:
            self._send(Message(MT.PRE_VOTE_RESPONSE, self._id, m.src, self._term, reject=True,
                reply_to=m.reply_to))
        # Everything else from an old term is ignored.

    def _step_follower(self, m: Message) -> None:
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self._election_elapsed = 0
            self._leader = m.src
            if m.type is MT.APPEND:
                self._handle_append(m)
            elif m.type is MT.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif m.type is MT.TIMEOUT_NOW:
            # Dissertation 3.10: campaign at once, skipping pre-vote, with a
            # vote request that voters must not ignore for the lease.
            self._hup(transfer=True)

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            # Paper 5.2: a leader of our term exists; return to follower.
            self._become_follower(m.term, m.src)
            self._step_follower(m)
            return
        mine = MT.PRE_VOTE_RESPONSE if self._role is Role.PRE_CANDIDATE else MT.VOTE_RESPONSE
        if m.type is not mine:
            return
        result = self._poll(m.src, not m.reject)
        if result is VoteResult.WON:
            if self._role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self._term, NONE)

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is None or m.src == self._id:
            return
        if m.type is MT.APPEND_RESPONSE:
            pr.recent_active = True
            if m.reject:
                self._handle_append_rejected(m, pr)
            else:
                self._handle_append_accepted(m, pr)
        elif m.type is MT.HEARTBEAT_RESPONSE:
            self._handle_heartbeat_response(m, pr)
        elif m.type is MT.SNAPSHOT_RESPONSE:
            pr.recent_active = True
            self._handle_snapshot_response(m, pr)

    # -- follower: AppendEntries, heartbeats, InstallSnapshot ---------------------

    def _handle_append(self, m: Message) -> None:
        """AppendEntries receiver (paper Figure 2)."""
        if m.index < self.log.committed:
            # Everything up to our commit matches the leader already.
            self._send(
                Message(MT.APPEND_RESPONSE, self._id, m.src, self._term, index=self.log.committed,
                    reply_to=m.reply_to)
            )
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if m.entries:
                self._track_confs(m.index, m.entries)
            self._send(Message(MT.APPEND_RESPONSE, self._id, m.src, self._term, index=last_new,
                reply_to=m.reply_to))
            return
        hint, hint_term = self._reject_hint(m.index)
        self._send(
            Message(
                MT.APPEND_RESPONSE,
                self._id,
                m.src,
                self._term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                reject_term=hint_term,
                reply_to=m.reply_to,
            )
        )

    def _reject_hint(self, index: int) -> tuple[int, int]:
        """Fast back-up (paper 5.3, "the follower can include the term of the
        conflicting entry and the first index it stores for that term"):
        (first index of the conflicting term, that term), or (our last index,
        0) if our log is too short to contain ``index``."""
        last = self.log.last_index()
        if index > last:
            return last, 0
        term = self.log.term(index)
        return self.log.first_index_of_term(index, self.log.committed + 1), term

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends commit = min(our match, its commit): we hold (and
        # have persisted) every entry up to it, and they match the leader's.
        if m.commit > self.log.last_index():
            # ... unless this node lost entries it acknowledged (an emptied
            # learner rejoining; a voter never may, see the node identity
            # checks). Say what we hold, as a rejected append would, and the
            # leader starts over from there.
            self._send(
                Message(
                    MT.HEARTBEAT_RESPONSE, self._id, m.src, self._term, context=m.context,
                    reject=True, reject_hint=self.log.last_index(), reply_to=m.reply_to,
                )
            )
            return
        self.log.commit_to(m.commit)
        self._send(Message(MT.HEARTBEAT_RESPONSE, self._id, m.src, self._term, context=m.context,
            reply_to=m.reply_to))

    def _handle_snapshot(self, m: Message) -> None:
        """One InstallSnapshot chunk (paper Figure 13, dissertation 5.3)."""
        meta = m.snapshot
        if meta is None:
            raise RuntimeError("SNAPSHOT message without metadata")
        if meta.index <= self.log.committed:
            # We already have everything it covers.
            self._snap_recv = None
            self._send(
                Message(MT.APPEND_RESPONSE, self._id, m.src, self._term, index=self.log.committed,
                    reply_to=m.reply_to)
            )
            return
        recv = self._snap_recv
        if m.offset == 0 and (recv is None or recv.meta != meta or len(recv.data) == 0):
            # Figure 13 rule 2: offset 0 starts a new snapshot file. A late
            # duplicate of the first chunk of the snapshot we are already
            # receiving does not restart it (it falls to the branch below).
            recv = self._snap_recv = _SnapshotReceive(meta, bytearray(m.data))
        elif recv is None or recv.meta != meta or m.offset != len(recv.data):
            # Missing or mismatched chunk: say which offset we want.
            want = len(recv.data) if recv is not None and recv.meta == meta else 0
            self._send(
                Message(
                    MT.SNAPSHOT_RESPONSE, self._id, m.src, self._term, snapshot=meta, offset=want,
                        reply_to=m.reply_to
                )
            )
            return
        else:
            recv.data += m.data
        if not m.done:
            self._send(
                Message(
                    MT.SNAPSHOT_RESPONSE,
                    self._id,
                    m.src,
                    self._term,
                    snapshot=meta,
                    offset=len(recv.data),
                    reply_to=m.reply_to,
                )
            )
            return
        self._snap_recv = None
        self._restore(Snapshot(meta=meta, data=bytes(recv.data)))
        # Either way our log now matches the leader's up to the commit index
        # (= the snapshot's index), and no further: entries we kept after it
        # (rule 6) may still conflict. The answer depends on the snapshot
        # being persisted: it leaves in the same Ready as Ready.snapshot.
        self._send(
            Message(MT.APPEND_RESPONSE, self._id, m.src, self._term, index=self.log.committed,
                reply_to=m.reply_to)
        )

    def _restore(self, snap: Snapshot) -> bool:
        """Install ``snap`` unless it is stale (Figure 13 rules 6-8)."""
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # Rule 6: our log already has the snapshot's last entry: keep the
            # entries after it; just learn that it is committed.
            self.log.commit_to(meta.index)
            return False
        # Rule 7: discard the entire log.
        self.log.restore(snap)
        membership = meta.membership if not meta.membership.empty else self._membership
        self._confs = [(meta.index, meta.term, membership)]
        self._use_membership(membership)
        return True

    # -- membership ---------------------------------------------------------------

    def _adopt_conf(self, index: int, term: int, membership: Membership) -> None:
        """A configuration entry is in this node's log: it is in force."""
        confs = self._confs
        confs.append((index, term, membership))
        # Configurations the last snapshot covers are needed no more, but
        # for the one in force at the snapshot's index.
        snap_index = self.log.first_index() - 1
        while len(confs) > 1 and confs[1][0] <= snap_index:
            confs.pop(0)
        self._use_membership(membership)

    def _track_confs(self, prev: int, entries: tuple[Entry, ...]) -> None:
        """After appending ``entries`` at ``prev + 1``: roll back the
        configurations whose entries were truncated away, adopt the new ones
        (dissertation 4.1: "a log entry for a configuration change may be
        removed ... the server must be prepared to fall back")."""
        confs = self._confs
        while (
            len(confs) > 1
            and confs[-1][0] > prev
            and not self.log.match_term(confs[-1][0], confs[-1][1])
        ):
            confs.pop()
        newest = confs[-1][0]
        for e in entries:
            if e.type is _CONF_CHANGE and e.index > newest:
                self._adopt_conf(e.index, e.term, Membership.decode(e.data))
        if self._membership is not confs[-1][2]:  # rolled back, nothing newer
            self._use_membership(confs[-1][2])

    def _use_membership(self, membership: Membership) -> None:
        old, self._membership = self._membership, membership
        if self._role is not _LEADER:
            return
        # The leader tracks every member: new ones start as probes (at the
        # end of its log, backing off from there); removed ones are
        # forgotten, except itself (it leads until its removal commits).
        last = self.log.last_index()
        for p in sorted(membership.members - old.members):
            if p not in self.progress:
                pr = Progress(last + 1, self._cfg.max_inflight_msgs, self._cfg.max_inflight_bytes)
                pr.recent_active = True
                self.progress[p] = pr
        # A removed member keeps being sent the log until its removal
        # commits (``_forget_removed``): so it learns it was removed, and
        # stops campaigning, instead of timing out and disrupting the others.
        if self._lead_transferee != NONE and self._lead_transferee not in membership.voters:
            self._lead_transferee = NONE

    def _forget_removed(self) -> None:
        """The removal of members is committed: send each the commit index
        (so it knows it is out for good), then stop tracking it."""
        members = self._membership.members
        for p in [p for p in self.progress if p not in members and p != self._id]:
            self._send_append_all(p, send_if_empty=True)
            del self.progress[p]

    def _step_down_if_removed(self) -> None:
        """Dissertation 4.2.2: a leader that is not in the configuration it
        committed steps down. It first tells the most up-to-date voter to
        campaign at once (3.10), so the cluster does not wait out an
        election timeout."""
        voters = self._membership.voters
        progress = self.progress
        best = max(sorted(voters), key=lambda p: progress[p].match if p in progress else -1)
        if best in self.progress and self.progress[best].match == self.log.last_index():
            self._send_timeout_now(best)
        self._become_follower(self._term, NONE)

    # -- leader: replication ------------------------------------------------------

    def _append_entry(self, data: bytes, type_: EntryType) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(index=index, term=self._term, data=data, type=type_)])
        self._bcast_entries = True
        return index

    def _flush_broadcast(self) -> None:
        if (self._bcast_entries or self._bcast_commit) and self._role is _LEADER:
            for p in self.progress:
                if p != self._id:
                    self._send_append_all(
                        p, send_if_empty=self._bcast_commit and self._cfg.broadcast_commit
                    )
        self._bcast_entries = self._bcast_commit = False

    def _send_append_all(self, to: int, send_if_empty: bool) -> None:
        """Send as much as the peer's state allows: one probe in PROBE, a
        pipeline of batches (bounded by inflights) in REPLICATE."""
        if self._maybe_send_append(to, send_if_empty):
            while self._maybe_send_append(to, send_if_empty=False):
                pass

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        last = self.log.last_index()
        if prev == last and not send_if_empty:
            # The peer has been sent everything (the usual end of a
            # _send_append_all loop): nothing to look up.
            return False
        try:
            prev_term = self.log.term(prev)
            ents = self.log.entries(pr.next, self._cfg.max_size_per_msg) if pr.next <= last else []
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        size = entries_size(ents)
        self._send(
            Message(
                MT.APPEND,
                self._id,
                to,
                self._term,
                log_term=prev_term,
                index=prev,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(ents[-1].index if ents else prev, len(ents), size)
        return True

    def _handle_append_rejected(self, m: Message, pr: Progress) -> None:
        # Fast back-up: skip the follower's whole conflicting term at once.
        if m.reject_term == 0:
            match_hint = m.reject_hint  # the follower is short: its last index
        else:
            k = self.log.find_conflict_by_term(m.index, m.reject_term)
            try:
                same = self.log.term(k) == m.reject_term
            except (CompactedError, UnavailableError):
                same = False
            # If we have the follower's term, the logs agree up to our last
            # entry of it (Log Matching); otherwise nothing of it matches.
            match_hint = k if same else min(k, m.reject_hint - 1)
        if pr.maybe_decr_to(m.index, match_hint):
            if pr.state is ProgressState.REPLICATE:
                next_index = pr.next
                pr.become_probe()
                pr.next = next_index
            self._send_append_all(m.src, send_if_empty=True)

    def _handle_append_accepted(self, m: Message, pr: Progress) -> None:
        was_paused = pr.is_paused()
        if pr.state is ProgressState.SNAPSHOT and m.index >= pr.pending_snapshot:
            # The peer holds (at least) the snapshot we were sending: either
            # it installed it, or it already had it. Done; if we compacted
            # past it meanwhile, the next send starts a newer snapshot.
            pr.maybe_update(m.index)
            pr.become_probe()
            if pr.match + 1 >= self.log.first_index():
                pr.become_replicate()
            self._commit_if_possible()
            if self._role is _LEADER:  # not if that commit removed it
                self._send_append_all(m.src, send_if_empty=True)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._commit_if_possible():
            if self._role is not _LEADER:
                return  # that commit removed this leader (_step_down_if_removed)
        elif was_paused:
            self._send_append_all(m.src, send_if_empty=True)
        self._send_append_all(m.src, send_if_empty=False)
        if m.src == self._lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.src)

    def _commit_if_possible(self) -> bool:
        if not self._maybe_commit():
            return False
        if self.log.committed >= self._confs[-1][0]:  # the membership in force is committed
            if len(self.progress) > len(self._membership.members):
                self._forget_removed()
            if self._id not in self._membership.voters:
                self._step_down_if_removed()
                return True
        self._bcast_commit = self._cfg.broadcast_commit
        if self._pending_reads and self._committed_in_current_term():
            reads, self._pending_reads = self._pending_reads, []
            self._start_reads(reads)
        return True

    def _committed_in_current_term(self) -> bool:
        try:
            return self.log.term(self.log.committed) == self._term
        except (CompactedError, UnavailableError):
            return False

    def _send_timeout_now(self, to: int) -> None:
        self._send(Message(MT.TIMEOUT_NOW, self._id, to, self._term))

    # -- leader: heartbeats and ReadIndex -----------------------------------------

    def _bcast_heartbeat(self, context: bytes) -> None:
        for p, pr in self.progress.items():
            if p != self._id:
                # Never tell a follower to commit past what it has acked.
                commit = min(pr.match, self.log.committed)
                self._send(
                    Message(MT.HEARTBEAT, self._id, p, self._term, commit=commit, context=context)
                )

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject and m.reject_hint < pr.match:
            # The peer holds less than it acknowledged (see _handle_heartbeat).
            pr.lost_entries(m.reject_hint)
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            # The peer is alive but the window is stuck: its acks (or our
            # APPENDs) were lost. Free a slot so the next APPEND can find out.
            pr.inflights.free_first_one()
        if pr.state is not ProgressState.SNAPSHOT and pr.match < self.log.last_index():
            self._send_append_all(m.src, send_if_empty=True)
        if m.context and self._read_only.recv_ack(m.src, m.context, self._membership.voters):
            for st in self._read_only.advance(m.context):
                self._read_states.append(ReadState(st.index, st.context))

    def _start_reads(self, contexts: list[bytes]) -> None:
        """Dissertation 6.4 steps 2-3: record commit as the read index and
        confirm leadership with a heartbeat round."""
        index = self.log.committed
        if has_quorum(self._membership.voters, [self._id]):
            # Single-node cluster: we are the majority.
            self._read_states.extend(ReadState(index, c) for c in contexts)
            return
        added = [c for c in contexts if self._read_only.add_request(index, c, self._id)]
        if added:
            self._bcast_heartbeat(added[-1])

    # -- leader: InstallSnapshot --------------------------------------------------

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't ship a snapshot to a peer that may be down
        snap = self.log.snapshot()
        if snap.empty:
            raise RuntimeError(f"log compacted before {self.log.first_index()} without a snapshot")
        pr.become_snapshot(snap)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        snap = pr.snap
        if snap is None:
            raise RuntimeError("no snapshot to send")
        off = pr.snap_offset
        chunk = snap.data[off : off + self._cfg.snapshot_chunk_size]
        done = off + len(chunk) >= len(snap.data)
        pr.snap_idle_ticks = 0
        self._send(
            Message(
                MT.SNAPSHOT,
                self._id,
                to,
                self._term,
                snapshot=snap.meta,
                offset=off,
                data=chunk,
                done=done,
            )
        )

    def _handle_snapshot_response(self, m: Message, pr: Progress) -> None:
        if pr.state is not ProgressState.SNAPSHOT or pr.snap is None or m.snapshot != pr.snap.meta:
            return
        if m.offset != pr.snap_offset:
            # The follower says which byte it needs next, and it is the one
            # holding the buffer: follow it, forwards or back. (Only ever
            # moving forward deadlocks when a duplicated first chunk makes the
            # follower restart its buffer behind our offset.) A stale
            # duplicate answer costs at most one wasted chunk.
            pr.snap_offset = min(m.offset, len(pr.snap.data))
            self._send_snapshot_chunk(m.src, pr)
        # Otherwise a duplicate answer; the resend timer covers losses.

    # -- output -------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        if m.reply_to:
            self._replies += 1
        if m.type in _AFTER_PERSIST:
            self._msgs_after_persist.append(m)
        else:
            self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self.log.committed)
