"""The vocabulary of the Raft core: entries, hard state, snapshots, messages.

Everything here is a frozen dataclass with ``__slots__``: values that the core
hands out can be kept, compared and logged without fear of aliasing. Protobuf
appears only at the wire edge (``raft/transport.py``); these types never
cross the network directly.

Indexes and terms follow the paper: the first log index is 1, index 0 / term 0
stand for "before the log" (the empty prefix every log shares).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from raft.membership import Membership

__all__ = [
    "ENTRY_OVERHEAD",
    "NONE",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "ReadState",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "entries_size",
]

#: Node id meaning "nobody" (no vote cast, no known leader). Real ids are >= 0.
NONE = -1


class EntryType(enum.IntEnum):
    NORMAL = 0
    #: The empty entry a new leader appends to commit its term (paper 5.4.2,
    #: dissertation 6.4: needed before ReadIndex can be served).
    NOOP = 1
    #: A whole new ``raft.membership.Membership``, encoded; in force on each
    #: node from the moment it is in that node's log, committed or not
    #: (dissertation 4.1).
    CONF_CHANGE = 2


#: Bytes ``Entry.size()`` adds to the payload (index, term, type, framing).
ENTRY_OVERHEAD = 24


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        """Approximate bytes on the wire; used for batching limits."""
        return len(self.data) + ENTRY_OVERHEAD


def entries_size(entries: Iterable[Entry]) -> int:
    """Total ``Entry.size()`` of ``entries``, without a method call per entry
    (the leader sums every batch it sends)."""
    total = 0
    for e in entries:
        total += len(e.data) + ENTRY_OVERHEAD
    return total


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be on stable storage before any message depending on it
    is sent (paper Figure 2, "Persistent state on all servers"). ``commit`` is
    persisted too so a restart can re-apply without waiting for a leader."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    #: The membership as of ``index`` (the latest configuration entry at or
    #: before it): a node restored from this snapshot alone knows its cluster.
    membership: Membership = field(default_factory=Membership)


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def empty(self) -> bool:
        return self.meta.index == 0


class MessageType(enum.IntEnum):
    """Messages exchanged between cores. Requests and their responses pair up
    as in the paper's RPCs; the transport maps them onto ``raftRpc``."""

    APPEND = 1  # AppendEntries request (also carries the leader's commit)
    APPEND_RESPONSE = 2
    VOTE = 3  # RequestVote
    VOTE_RESPONSE = 4
    PRE_VOTE = 5  # dissertation 9.6: a vote that does not bump terms
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7  # empty AppendEntries; carries a read-index context
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9  # one InstallSnapshot chunk
    SNAPSHOT_RESPONSE = 10
    TIMEOUT_NOW = 11  # leadership transfer: campaign now (dissertation 3.10)


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Fields unused by a type keep their defaults.

    - ``log_term``/``index``: for APPEND, the entry preceding ``entries``
      (prevLogTerm/prevLogIndex); for VOTE/PRE_VOTE, the candidate's last
      entry; for APPEND_RESPONSE, the index acknowledged or rejected.
    - ``reject_hint``/``reject_term``: on a rejected APPEND_RESPONSE, the fast
      back-up hint (dissertation 5.3): the follower's conflicting term and the
      first index it holds of that term, or its last index when it is short.
    - ``context``: for HEARTBEAT/HEARTBEAT_RESPONSE, the ReadIndex round the
      heartbeat confirms.
    - ``snapshot``/``offset``/``done``: for SNAPSHOT, the snapshot metadata and
      one chunk of its data at byte ``offset``; ``done`` marks the last chunk.
      For SNAPSHOT_RESPONSE, ``offset`` is the next byte the receiver wants.
    - ``reply_to``: local only, never on the wire. A driver that answers a
      peer's request on the same call (an RPC) gives the request an id here;
      the core copies it into the one response it builds for that request,
      so the driver routes the response back to its call without guessing
      (hashicorp/raft's ``RPC.Respond``). 0: not a correlated request.
    """

    type: MessageType
    src: int
    dst: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    reject_term: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None
    data: bytes = b""
    offset: int = 0
    done: bool = False
    reply_to: int = 0

    # Written out instead of generated: several messages are built per
    # operation, and a frozen dataclass's generated __init__ stores each of
    # the 17 fields through object.__setattr__; storing through the slot
    # descriptors (``_MESSAGE_SETTERS``, below the class) takes about half the
    # time. Same signature and defaults as the fields above
    # (``_check_message_init`` verifies that at import).
    def __init__(
        self,
        type: MessageType,
        src: int,
        dst: int,
        term: int = 0,
        log_term: int = 0,
        index: int = 0,
        entries: tuple[Entry, ...] = (),
        commit: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        reject_term: int = 0,
        context: bytes = b"",
        snapshot: SnapshotMeta | None = None,
        data: bytes = b"",
        offset: int = 0,
        done: bool = False,
        reply_to: int = 0,
    ) -> None:
        (
            set_type,
            set_src,
            set_dst,
            set_term,
            set_log_term,
            set_index,
            set_entries,
            set_commit,
            set_reject,
            set_reject_hint,
            set_reject_term,
            set_context,
            set_snapshot,
            set_data,
            set_offset,
            set_done,
            set_reply_to,
        ) = _MESSAGE_SETTERS
        set_type(self, type)
        set_src(self, src)
        set_dst(self, dst)
        set_term(self, term)
        set_log_term(self, log_term)
        set_index(self, index)
        set_entries(self, entries)
        set_commit(self, commit)
        set_reject(self, reject)
        set_reject_hint(self, reject_hint)
        set_reject_term(self, reject_term)
        set_context(self, context)
        set_snapshot(self, snapshot)
        set_data(self, data)
        set_offset(self, offset)
        set_done(self, done)
        set_reply_to(self, reply_to)


#: The slot descriptors' setters of Message's fields, in field order.
_MESSAGE_SETTERS: tuple[Callable[[Message, Any], None], ...] = tuple(
    getattr(Message, f.name).__set__ for f in fields(Message)
)


def _check_message_init() -> None:
    params = list(inspect.signature(Message.__init__).parameters.values())[1:]
    for f, p in zip(fields(Message), params, strict=True):
        default = p.default if p.default is not inspect.Parameter.empty else MISSING
        if f.name != p.name or f.default != default:
            raise TypeError(f"Message.__init__ disagrees with field {f.name!r}")


_check_message_init()


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (not persisted)."""

    leader: int = NONE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied
    ``index``. ``context`` is what the caller passed to ``read_index``."""

    index: int
    context: bytes
