"""Conversion between the core's dataclasses and ``raft.proto``.

The only module besides ``raft/transport.py`` that knows protobuf; kept apart
so the conversion can be tested (round trips) without sockets.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from raft import raft_pb2
from raft.membership import Membership
from raft.types import Entry, EntryType, Message, MessageType, SnapshotMeta

__all__ = ["RPC_METHOD", "message_from_pb", "message_to_pb", "pack_entries", "unpack_entries"]

_ENTRY_HEADER = struct.Struct(">QQBI")

#: Which raftRpc method carries a request of each type (responses ride back
#: as the call's reply).
RPC_METHOD: dict[MessageType, str] = {
    MessageType.APPEND: "AppendEntries",
    MessageType.HEARTBEAT: "AppendEntries",
    MessageType.VOTE: "RequestVote",
    MessageType.PRE_VOTE: "RequestVote",
    MessageType.SNAPSHOT: "InstallSnapshot",
    MessageType.TIMEOUT_NOW: "TimeoutNow",
}


def message_to_pb(msg: Message, packed: bytes | None = None) -> raft_pb2.RaftMessage:
    """``packed``: ``pack_entries(msg.entries)`` if the caller has it already
    (a leader sends the same entries to every follower)."""
    pb = raft_pb2.RaftMessage(
        type=msg.type,
        src=msg.src,
        dst=msg.dst,
        term=msg.term,
        log_term=msg.log_term,
        index=msg.index,
        commit=msg.commit,
        reject=msg.reject,
        reject_hint=msg.reject_hint,
        reject_term=msg.reject_term,
        context=msg.context,
        data=msg.data,
        offset=msg.offset,
        done=msg.done,
    )
    if msg.entries:
        pb.entries = packed if packed is not None else pack_entries(msg.entries)
    if msg.snapshot is not None:
        meta = msg.snapshot
        pb.snapshot.CopyFrom(
            raft_pb2.SnapshotMeta(
                index=meta.index, term=meta.term, membership=meta.membership.encode()
            )
        )
    return pb


# Plain dict lookups: calling an IntEnum per message and per entry showed up
# in profiles of the replication path.
_MESSAGE_TYPES = {t.value: t for t in MessageType}
_ENTRY_TYPES = {t.value: t for t in EntryType}


def _entry_type(value: int) -> EntryType:
    try:
        return _ENTRY_TYPES[value]
    except KeyError:
        raise ValueError(f"unknown entry type {value}") from None


def message_from_pb(pb: raft_pb2.RaftMessage) -> Message:
    """Raises ``ValueError`` for a message type or entry type we do not know."""
    mtype = _MESSAGE_TYPES.get(pb.type)
    if mtype is None:
        raise ValueError(f"unknown message type {pb.type}")
    if pb.legacy_entries:
        raise ValueError(
            "entries in the repeated-message encoding of field 7: the sender runs an older"
            " version (0.1); every node of a cluster must run the same version"
        )
    snapshot = None
    if pb.HasField("snapshot"):
        pm = pb.snapshot
        membership = (
            Membership.decode(pm.membership) if pm.membership else Membership.of(pm.peers)
        )
        snapshot = SnapshotMeta(index=pm.index, term=pm.term, membership=membership)
    return Message(
        type=mtype,
        src=pb.src,
        dst=pb.dst,
        term=pb.term,
        log_term=pb.log_term,
        index=pb.index,
        entries=unpack_entries(pb.entries) if pb.entries else (),
        commit=pb.commit,
        reject=pb.reject,
        reject_hint=pb.reject_hint,
        reject_term=pb.reject_term,
        context=pb.context,
        snapshot=snapshot,
        data=pb.data,
        offset=pb.offset,
        done=pb.done,
    )


def pack_entries(entries: Sequence[Entry]) -> bytes:
    """The ``entries`` field of raft.proto: header + data per entry."""
    pack = _ENTRY_HEADER.pack
    parts: list[bytes] = []
    for e in entries:
        data = e.data
        parts.append(pack(e.index, e.term, e.type, len(data)))
        parts.append(data)
    return b"".join(parts)


def unpack_entries(blob: bytes) -> tuple[Entry, ...]:
    """Inverse of ``pack_entries``; ``ValueError`` if malformed."""
    unpack = _ENTRY_HEADER.unpack_from
    header = _ENTRY_HEADER.size
    entries: list[Entry] = []
    pos, end = 0, len(blob)
    while pos < end:
        if end - pos < header:
            raise ValueError(f"truncated entry header at byte {pos}")
        index, term, etype, length = unpack(blob, pos)
        pos += header
        if length > end - pos:
            raise ValueError(f"entry {index} claims {length} bytes, {end - pos} left")
        entries.append(
            Entry(index=index, term=term, data=blob[pos : pos + length], type=_entry_type(etype))
        )
        pos += length
    return tuple(entries)
