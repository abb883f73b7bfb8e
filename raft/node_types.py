"""The node's interfaces and value types: what ``RaftNode`` is given (a
state machine, a transport, a ``NodeConfig``) and what it reports (status,
metrics, the exceptions its futures fail with). Re-exported by
``raft.node``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, Protocol

from raft.core import Config
from raft.membership import Membership
from raft.types import Entry, Message, Role, SnapshotMeta

__all__ = [
    "LeadershipLost",
    "NodeConfig",
    "NodeMetrics",
    "NodeStatus",
    "NodeStopped",
    "StateMachine",
    "Transport",
]


class StateMachine(Protocol):
    """The application (hashicorp/raft's FSM). ``apply`` must be
    deterministic (see kvserver/state_machine.py for the full contract).

    A state machine may keep its state on disk, unsynced: the Raft log is
    the durability point. It then reports at open what it holds
    (``applied_index``, ``applied_term``), and the node replays the log
    from there. It may also be ahead of the log: committed entries are
    applied before this node's own write of them is durable (``Ready`` rule
    4), so after a crash the node restarts its log after what the state
    machine holds (``raft.snapshotter.recover_state_machine``)."""

    @property
    def applied_index(self) -> int:
        """The index of the last entry applied (0: none)."""

    @property
    def applied_term(self) -> int:
        """The term of that entry (0: none)."""

    @property
    def applied_membership(self) -> Membership | None:
        """The membership of the last ``CONF_CHANGE`` entry applied (or of
        the snapshot last restored); None if it has seen none. Kept with the
        applied index: a state machine ahead of the log after a crash may
        have applied a membership change the log no longer holds."""

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply committed entries, in index order, as one batch (on disk:
        one transaction, the applied index with it). One result per entry;
        entries that are not ``NORMAL`` (a new leader's no-op) advance the
        applied index and give None. Entries at or below ``applied_index``
        are skipped (None): after a crash or a snapshot the log may deliver
        them again."""

    def snapshot(self) -> bytes:
        """The state at ``applied_index``, or (for a state machine whose
        snapshots are files, ``raft.snapshot_stream.FileSnapshots``) a
        small marker of it."""

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        """Replace the state with the snapshot ``meta`` (``data`` is what
        ``snapshot`` gave at its index)."""

    def sync(self) -> None:
        """Make everything applied so far durable (on disk: fsync; in
        memory: nothing). Runs in the storage worker, off the loop, before
        the log before ``applied_index`` is compacted away."""


class Transport(Protocol):
    """Sends request messages to peers; replies come back via ``RaftNode.step``."""

    def send(self, msg: Message) -> None: ...

    def flush(self) -> None:
        """Put what ``send`` buffered on the wire now (the node calls this
        before its fsync, so peers start their part meanwhile)."""

    async def close(self) -> None: ...


class NodeStopped(Exception):
    """The node shut down before the operation finished."""


class LeadershipLost(Exception):
    """This node stopped being leader while the proposal was in flight: it
    may or may not commit. Retry with the same request id (at-most-once)."""


@dataclass(frozen=True)
class NodeConfig:
    id: int
    #: The bootstrap voters (the membership until the log or a snapshot
    #: holds one; ``raft.core.Config.peers``).
    peers: frozenset[int]
    #: Seconds per tick. Defaults follow the seed: heartbeat 25 ms (1 tick),
    #: election timeout randomized in 300-475 ms (12 + 0..7 ticks).
    tick_interval: float = 0.025
    heartbeat_tick: int = 1
    election_tick: int = 12
    election_jitter: int | None = 8
    pre_vote: bool = True
    check_quorum: bool = True
    #: See raft.core.Config.broadcast_commit: off, followers learn the commit
    #: index with the next append or heartbeat (<= 25 ms later), which halves
    #: the messages of sequential writes.
    broadcast_commit: bool = False
    #: Take a snapshot once the log holds more than this many bytes of
    #: entries since the last one (the seed's maxraftstate); None: never.
    max_raft_state: int | None = None
    #: Entries kept behind a snapshot so a slightly lagging follower can catch
    #: up from the log instead of needing the whole snapshot.
    snapshot_catchup_entries: int = 1000
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    seed: int | None = None
    #: The bootstrap membership with learners and addresses; when set, it
    #: takes the place of ``peers``.
    membership: Membership | None = None

    def bootstrap_membership(self) -> Membership:
        return self.membership if self.membership is not None else Membership.of(self.peers)

    def core_config(self, applied: int) -> Config:
        """The core's ``Config`` for this node, ``applied`` entries applied."""
        return Config(
            id=self.id,
            peers=self.peers,
            membership=self.membership,
            rng=Random(self.seed),
            election_tick=self.election_tick,
            election_jitter=self.election_jitter,
            heartbeat_tick=self.heartbeat_tick,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            broadcast_commit=self.broadcast_commit,
            max_size_per_msg=self.max_size_per_msg,
            max_inflight_msgs=self.max_inflight_msgs,
            applied=applied,
        )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    id: int
    role: Role
    term: int
    leader: int
    commit: int
    applied: int
    last_index: int
    first_index: int
    snapshot_index: int


@dataclass(slots=True)
class NodeMetrics:
    """Counters since start (for status pages and benchmarks)."""

    #: Writes that needed an fsync: one for everything a drain took (group
    #: commit).
    saves: int = 0
    entries_persisted: int = 0
    messages_sent: int = 0
    entries_applied: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
