"""Raft consensus: a pure state machine core (``raft.core``) with its log,
progress tracking, quorum arithmetic and ReadIndex bookkeeping, plus the
storage interfaces it reads. I/O lives elsewhere (``raft.node``, ``raft.wal``)."""

from raft.core import (
    TRANSFER_CONTEXT,
    Config,
    NotLeader,
    PeerStatus,
    ProposalDropped,
    RaftCore,
    Ready,
    Status,
)
from raft.log import RaftLog
from raft.progress import Inflights, Progress, ProgressState
from raft.storage import (
    CompactedError,
    LogStorage,
    MemoryStorage,
    SnapshotOutOfDateError,
    Storage,
    StorageError,
    UnavailableError,
)
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
)

__all__ = [
    "NONE",
    "TRANSFER_CONTEXT",
    "CompactedError",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "Inflights",
    "LogStorage",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeader",
    "PeerStatus",
    "Progress",
    "ProgressState",
    "ProposalDropped",
    "RaftCore",
    "RaftLog",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SnapshotOutOfDateError",
    "SoftState",
    "Status",
    "Storage",
    "StorageError",
    "UnavailableError",
]
