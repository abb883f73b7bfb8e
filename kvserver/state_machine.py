"""The replicated key-value state machine, kept in a ``KvStore``.

Contract (what Raft relies on, as hashicorp/raft's FSM states it;
``raft.node.StateMachine``):

* ``apply(entries)`` is deterministic: every replica that applies the same
  entries in the same order reaches the same state and returns the same
  results. It never reads a clock, a random source or anything local; time
  enters only as the leader's stamp inside the command. A batch of entries
  is one store transaction holding the data changes, the changed client
  sessions and the applied index (and term, and the cluster clock), so the
  store is always the state after some applied index, never between two.
* The store need not be durable: the Raft WAL is. ``applied_index`` says what
  the store holds at open; the node replays the log from there, and entries
  at or below it are skipped when they come again (after a crash, or after a
  snapshot file whose copy was taken past its index).
* Snapshots: ``KvStateMachine`` gives and takes the whole state as bytes
  (a versioned protobuf, ``KvSnapshot``; in-memory stores, tests, and the
  data dirs of earlier releases). ``DiskKvStateMachine`` (LMDB, the
  server's) never serializes its state: a snapshot is a consistent copy of
  the store file, written by the storage worker (``save_snapshot``) and
  streamed to followers as a file (``raft.snapshot_stream``); its Raft
  snapshot data is only a marker.

Keys and values are ``bytes`` (any bytes, compared bytewise). The reads the
service makes: ``get(key) -> bytes | None``, ``scan(start, end, limit,
max_bytes) -> ScanPage`` (an ordered range read, the store's B-tree order),
and ``value_size(key)``.

At-most-once (Raft dissertation 6.3): each client numbers its writes
``seq = 1, 2, ...`` and sends with each the lowest seq whose reply it has not
yet seen (``ack_seq``). The session table keeps, per client, the seqs applied
at or above ``ack_seq``; a request whose seq is below ``ack_seq`` or already
in that set is a duplicate and is not applied again. This holds with many
writes of one client in flight at once, in any order. The only reply that
carries data is a CAS's (swapped or not): the session also keeps the seqs
at or above ``ack_seq`` whose CAS did not swap, so a retry is answered as
the first time (``Applied.NOT_SWAPPED`` again, else ``DUPLICATE``: done).
A duplicate below ``ack_seq`` is answered ``DUPLICATE`` whatever it was:
the client said it has seen that reply, so nobody is waiting for it. The
sessions live in the store (each changed one rewritten in the batch that
changed it) and, for expiry order, in memory.

Session expiry, decided in ``apply`` so every replica expires the same ones:
the state machine's clock is the largest stamp applied so far; a session idle
for longer than ``session_ttl_ms`` of that clock is dropped, and when there
are more than ``max_sessions`` the least recently active is dropped.

The stamps are *cluster time*, not any node's wall clock (LogCabin's
ClusterClock; Raft dissertation 6.3): a leader stamps the clock it found
applied when it took office plus its own monotonic time since
(``kvserver.service``). So one node's wall clock being hours ahead or behind,
or jumping, expires nobody early; cluster time advances no faster than real
time elapses on the current leader, and not at all between leaders, so a
session lives at least ``session_ttl_ms`` of real time after its last
request.

Guarantee left: a write is applied at most once as long as its retries reach
the cluster within ``session_ttl_ms`` (default one hour; the Clerk gives up
after its timeout, seconds) and fewer than ``max_sessions`` other clients
were active since. A client whose session expired is treated as new.

Limits (``kvserver.limits``): an APPEND that would leave a value longer than
the ``max_value_bytes`` stamped in its command is refused (``TOO_LARGE``):
nothing changes and its seq is not recorded, so a retry is judged afresh.
A PUT's or CAS's value is checked on arrival only: it cannot grow after.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kvserver import kv_pb2
from kvserver.kv_store import KvStore, WriteBatch
from kvserver.memory_store import MemoryKvStore
from raft.fileio import OsFileSystem
from raft.membership import Membership
from raft.snapshot_stream import install_copy, remove_older_snapshots, snapshot_path
from raft.storage import StorageError
from raft.types import Entry, EntryType, SnapshotMeta

__all__ = [
    "Applied",
    "DiskKvStateMachine",
    "KvStateMachine",
    "ScanPage",
    "SnapshotFormatError",
    "decode_command",
    "encode_command",
]

SNAPSHOT_VERSION = 1
DEFAULT_SESSION_TTL_MS = 3_600_000
DEFAULT_MAX_SESSIONS = 100_000


class SnapshotFormatError(Exception):
    """A snapshot this version cannot read."""


class Applied(enum.Enum):
    """What ``apply`` did with a command."""

    #: The write took effect.
    DONE = "done"
    #: The client's seq was applied before (or acknowledged): nothing changed.
    DUPLICATE = "duplicate"
    #: An APPEND that would pass the command's ``max_value_bytes``: nothing
    #: changed, the seq is not recorded.
    TOO_LARGE = "too large"
    #: A CAS whose key did not hold the expected value: nothing changed,
    #: the seq is recorded (and so is this answer, for its retries).
    NOT_SWAPPED = "not swapped"


class ScanPage(NamedTuple):
    """A page of an ordered range read."""

    #: (key, value) in key order.
    pairs: list[tuple[bytes, bytes]]
    #: The first key of the range not in ``pairs`` (where the next page
    #: starts), or None when the page ends the range.
    next_start: bytes | None

    @property
    def more(self) -> bool:
        return self.next_start is not None


@dataclass(slots=True)
class _Session:
    ack_seq: int = 1
    applied: set[int] = field(default_factory=set)
    #: The seqs in ``applied`` whose CAS did not swap.
    failed: set[int] = field(default_factory=set)
    pruned_size: int = 0
    last_active_ms: int = 0
    last_active_index: int = 0

    def is_duplicate(self, seq: int) -> bool:
        return seq < self.ack_seq or seq in self.applied

    def acknowledge(self, ack_seq: int) -> None:
        # The client has seen every reply below ack_seq: those seqs are
        # duplicates by the ack_seq rule alone, so their entries can go. Prune
        # only when the set has grown (amortized O(1) per request; a rebuild
        # per request costs O(requests in flight)).
        if ack_seq > self.ack_seq:
            self.ack_seq = ack_seq
            if len(self.applied) > 2 * self.pruned_size + 8:
                self.applied = {s for s in self.applied if s >= ack_seq}
                self.pruned_size = len(self.applied)
                if self.failed:
                    self.failed = {s for s in self.failed if s >= ack_seq}

    def duplicate_answer(self, seq: int) -> Applied:
        """The answer to a duplicate of ``seq`` (see the module doc)."""
        if seq >= self.ack_seq and seq in self.failed:
            return Applied.NOT_SWAPPED
        return Applied.DUPLICATE


def encode_command(cmd: kv_pb2.Command) -> bytes:
    return cmd.SerializeToString()


def decode_command(data: bytes) -> kv_pb2.Command:
    cmd = kv_pb2.Command()
    cmd.ParseFromString(data)
    return cmd


_META_APPLIED_INDEX = "applied_index"
_META_APPLIED_TERM = "applied_term"
_META_CLOCK_MS = "clock_ms"
_META_MEMBERSHIP = "membership"
_META_SEEN = "seen_members"
#: The Raft snapshot data of a ``DiskKvStateMachine``: the state is the
#: snapshot file, not these bytes (an older release's data dir holds a
#: ``KvSnapshot`` there instead, which ``restore`` still reads).
FILE_SNAPSHOT_MARKER = b"pyraftkv file snapshot v1"


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def _encode_ids(ids: frozenset[int]) -> bytes:
    return ",".join(map(str, sorted(ids))).encode()


def _decode_ids(data: bytes) -> frozenset[int]:
    return frozenset(int(x) for x in data.split(b",") if x)


def _encode_session(client_id: int, s: _Session) -> bytes:
    return kv_pb2.Session(
        client_id=client_id,
        ack_seq=s.ack_seq,
        applied_seqs=sorted(q for q in s.applied if q >= s.ack_seq),
        failed_seqs=sorted(q for q in s.failed if q >= s.ack_seq),
        last_active_ms=s.last_active_ms,
        last_active_index=s.last_active_index,
    ).SerializeToString(deterministic=True)


def _decode_session(pb: kv_pb2.Session) -> _Session:
    return _Session(ack_seq=pb.ack_seq, applied=set(pb.applied_seqs),
                    failed=set(pb.failed_seqs), last_active_ms=pb.last_active_ms,
                    last_active_index=pb.last_active_index)


class KvStateMachine:
    """The state machine over ``store`` (default: a new ``MemoryKvStore``);
    snapshots are bytes. Reads and applies run on the event loop."""

    def __init__(
        self,
        store: KvStore | None = None,
        *,
        session_ttl_ms: int = DEFAULT_SESSION_TTL_MS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self._store: KvStore = store if store is not None else MemoryKvStore()
        # Ordered by last activity, least recent first: expiry pops the front.
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        #: Sessions changed (or dropped: None) by the batch being applied.
        self._dirty: dict[int, _Session | None] = {}
        self._clock_ms = 0
        self._applied_index = 0
        self._applied_term = 0
        self._applied_membership: Membership | None = None
        self._membership_dirty = False
        #: Members known to have acknowledged entries (MEMBER_SEEN records).
        self._seen: frozenset[int] = frozenset()
        self._seen_dirty = False
        self._load()

    def _load(self) -> None:
        """Read the applied index, clock and sessions from the store."""
        store = self._store
        self._applied_index = int.from_bytes(store.get_meta(_META_APPLIED_INDEX) or b"", "big")
        self._applied_term = int.from_bytes(store.get_meta(_META_APPLIED_TERM) or b"", "big")
        self._clock_ms = int.from_bytes(store.get_meta(_META_CLOCK_MS) or b"", "big")
        membership = store.get_meta(_META_MEMBERSHIP)
        self._applied_membership = Membership.decode(membership) if membership else None
        self._seen = _decode_ids(store.get_meta(_META_SEEN) or b"")
        loaded = []
        for client_id, blob in store.sessions():
            pb = kv_pb2.Session()
            pb.ParseFromString(blob)
            loaded.append((pb.last_active_index, client_id, _decode_session(pb)))
        loaded.sort()
        self._sessions = OrderedDict((cid, sess) for _, cid, sess in loaded)

    @property
    def store(self) -> KvStore:
        return self._store

    # -- reads (served after ReadIndex confirms the applied state is current) --

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None when it is absent."""
        return self._store.get(key)

    def scan(self, start: bytes, end: bytes | None, limit: int, max_bytes: int,
             *, overhead: int = 0) -> ScanPage:
        """The pairs with ``start <= key < end`` (``end`` None: no upper
        bound) in key order: at most ``limit`` of them, and no more than
        ``max_bytes`` together, each counted as its key and value plus
        ``overhead`` bytes (what framing it costs the caller), except that
        a page holds at least one pair when the range has one (``limit``
        >= 1)."""
        pairs, next_start = self._store.scan(start, end, limit, max_bytes, overhead=overhead)
        return ScanPage(pairs, next_start)

    def __len__(self) -> int:
        return self._store.key_count()

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def size_bytes(self) -> int:
        """Bytes the store uses (what ``--max-db-bytes`` bounds)."""
        return self._store.size_bytes()

    # -- the replicated part -------------------------------------------------

    @property
    def clock_ms(self) -> int:
        """Cluster time: the largest stamp applied so far (ms)."""
        return self._clock_ms

    @property
    def applied_index(self) -> int:
        """The index of the last entry applied (0: none)."""
        return self._applied_index

    @property
    def applied_term(self) -> int:
        return self._applied_term

    @property
    def applied_membership(self) -> Membership | None:
        """The membership of the last configuration entry applied, or of the
        snapshot restored (``raft.node.StateMachine``); None before any."""
        return self._applied_membership

    def _set_membership(self, membership: Membership) -> None:
        self._applied_membership = membership
        self._membership_dirty = True

    @property
    def seen_members(self) -> frozenset[int]:
        """Members the cluster has heard from (MEMBER_SEEN commands applied):
        each held data once, so an empty data dir may never again start as
        one of them (kvserver/seen.py). A member removed by a later
        configuration entry leaves this set: re-added, it starts unseen."""
        return self._seen

    def _set_seen(self, seen: frozenset[int]) -> None:
        if seen != self._seen:
            self._seen = seen
            self._seen_dirty = True

    def value_size(self, key: bytes) -> int:
        """Bytes of ``key``'s value (0 when absent)."""
        value = self._store.get(key)
        return 0 if value is None else len(value)

    def apply(self, entries: Sequence[Entry]) -> list[Applied | None]:
        """Apply a batch of committed entries in one store transaction
        (``raft.node.StateMachine``): what each command did; None for a
        no-op entry, or one at or below ``applied_index`` (delivered again)."""
        results: list[Applied | None] = []
        if not entries or entries[-1].index <= self._applied_index:  # all delivered again
            return [None] * len(entries)
        with self._store.write() as batch:
            for entry in entries:
                if entry.index <= self._applied_index:
                    results.append(None)
                    continue
                self._applied_index, self._applied_term = entry.index, entry.term
                if entry.type is EntryType.NORMAL:
                    results.append(self._apply_command(batch, entry.index, entry.data))
                    continue
                if entry.type is EntryType.CONF_CHANGE:
                    membership = Membership.decode(entry.data)
                    self._set_membership(membership)
                    self._set_seen(self._seen & membership.members)
                results.append(None)
            self._finish(batch)
        return results

    def apply_command(self, index: int, data: bytes) -> Applied:
        """Apply one committed command in its own transaction (tests and
        tools; the node applies batches); what it did (``Applied``)."""
        with self._store.write() as batch:
            result = self._apply_command(batch, index, data)
            self._finish(batch)
        return result

    def _apply_command(self, batch: WriteBatch, index: int, data: bytes) -> Applied:
        cmd = decode_command(data)
        if cmd.op == kv_pb2.MEMBER_SEEN:
            # No session: the leader's own record, not a client's write.
            members = self._applied_membership
            ids = frozenset(cmd.member_ids)
            if members is not None:
                # A member removed since the leader looked is not marked.
                ids &= members.members
            self._set_seen(self._seen | ids)
            return Applied.DONE
        client_id = cmd.client_id
        if cmd.stamp_ms > self._clock_ms:
            self._clock_ms = cmd.stamp_ms
            # Only a clock that moved can expire anyone (activity times only
            # grow, and new sessions start at the clock).
            self._expire_sessions()
        sessions = self._sessions
        session = sessions.get(client_id)
        if session is None:
            session = sessions[client_id] = _Session()
        else:
            sessions.move_to_end(client_id)
        self._dirty[client_id] = session
        session.last_active_ms = self._clock_ms
        session.last_active_index = index
        session.acknowledge(cmd.ack_seq)
        seq = cmd.seq
        if session.is_duplicate(seq):
            return session.duplicate_answer(seq)
        op, key = cmd.op, cmd.key
        if op == kv_pb2.APPEND and cmd.max_value_bytes:
            old = batch.get(key)
            if (0 if old is None else len(old)) + len(cmd.value) > cmd.max_value_bytes:
                return Applied.TOO_LARGE
        session.applied.add(seq)
        result = Applied.DONE
        if op == kv_pb2.PUT:
            batch.put(key, cmd.value)
        elif op == kv_pb2.APPEND:
            batch.put(key, (batch.get(key) or b"") + cmd.value)
        elif op == kv_pb2.DELETE:
            batch.delete(key)
        elif op == kv_pb2.CAS:
            expected = cmd.expected if cmd.HasField("expected") else None
            if batch.get(key) == expected:
                batch.put(key, cmd.value)
            else:
                session.failed.add(seq)
                result = Applied.NOT_SWAPPED
        # Unknown ops (from a newer version) are ignored identically everywhere.
        while len(sessions) > self.max_sessions:
            dropped, _ = sessions.popitem(last=False)
            self._dirty[dropped] = None
        return result

    def _finish(self, batch: WriteBatch) -> None:
        """Write the batch's session changes, applied index and clock."""
        for client_id, session in self._dirty.items():
            if session is None:
                batch.delete_session(client_id)
            else:
                batch.put_session(client_id, _encode_session(client_id, session))
        self._dirty.clear()
        batch.set_meta(_META_APPLIED_INDEX, _u64(self._applied_index))
        batch.set_meta(_META_APPLIED_TERM, _u64(self._applied_term))
        batch.set_meta(_META_CLOCK_MS, _u64(self._clock_ms))
        if self._membership_dirty and self._applied_membership is not None:
            batch.set_meta(_META_MEMBERSHIP, self._applied_membership.encode())
            self._membership_dirty = False
        if self._seen_dirty:
            batch.set_meta(_META_SEEN, _encode_ids(self._seen))
            self._seen_dirty = False

    def _expire_sessions(self) -> None:
        horizon = self._clock_ms - self.session_ttl_ms
        sessions = self._sessions
        while sessions:
            client_id, session = next(iter(sessions.items()))
            if session.last_active_ms >= horizon:
                break
            del sessions[client_id]
            self._dirty[client_id] = None

    def sync(self) -> None:
        """Make the store durable through ``applied_index`` (worker thread)."""
        self._store.sync()

    # -- snapshots as bytes ------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as a ``KvSnapshot`` (O(data): for in-memory
        stores and tests; ``DiskKvStateMachine`` overrides it)."""
        # Still version 1: ``data`` (pairs in key order) is wire-identical to
        # the former map<string, string>, and an older release ignores
        # ``failed_seqs`` (kv.proto).
        snap = kv_pb2.KvSnapshot(version=SNAPSHOT_VERSION, clock_ms=self._clock_ms,
                                 seen_members=sorted(self._seen))
        add = snap.data.add
        start: bytes | None = b""
        while start is not None:
            pairs, start = self._store.scan(start, None, 10_000, 1 << 62)
            for key, value in pairs:
                add(key=key, value=value)
        for client_id, s in self._sessions.items():
            pb = snap.sessions.add()
            pb.ParseFromString(_encode_session(client_id, s))
        return snap.SerializeToString(deterministic=True)

    def restore(self, data: bytes, meta: SnapshotMeta | None = None) -> None:
        """Replace the state with a ``KvSnapshot``'s (``meta``: where it was
        taken; None keeps the applied index). Raises ``SnapshotFormatError``."""
        snap = kv_pb2.KvSnapshot()
        if data:
            try:
                snap.ParseFromString(data)
            except Exception as exc:  # protobuf raises DecodeError; be explicit
                raise SnapshotFormatError(f"undecodable KV snapshot: {exc}") from None
            if snap.version != SNAPSHOT_VERSION:
                raise SnapshotFormatError(
                    f"KV snapshot version {snap.version}, this build reads {SNAPSHOT_VERSION}"
                )
        if meta is not None:
            self._applied_index, self._applied_term = meta.index, meta.term
            if not meta.membership.empty:
                self._set_membership(meta.membership)
        store = self._store
        old_keys: list[bytes] = []
        start: bytes | None = b""
        while start is not None:
            pairs, start = store.scan(start, None, 10_000, 1 << 62)
            old_keys += [key for key, _ in pairs]
        with store.write() as batch:
            # Empty the store (the empty snapshot: the state before any entry).
            for key in old_keys:
                batch.delete(key)
            for client_id, _blob in list(store.sessions()):
                batch.delete_session(client_id)
            for pair in snap.data:
                batch.put(pair.key, pair.value)
            self._sessions = OrderedDict(
                (pb.client_id, _decode_session(pb)) for pb in snap.sessions)
            self._dirty = dict(self._sessions)
            self._clock_ms = snap.clock_ms
            self._seen, self._seen_dirty = frozenset(snap.seen_members), True
            self._finish(batch)


class DiskKvStateMachine(KvStateMachine):
    """The server's state machine: ``store`` on disk (an ``LmdbKvStore``),
    snapshots as files in ``snapshot_dir`` (``raft.snapshot_stream``).

    ``save_snapshot`` (storage worker) writes a consistent copy of the store
    as the snapshot file of a Raft snapshot; it is what a follower that
    needs a snapshot is streamed, and what this node restores after its
    store was lost (a power failure may leave an unsynced LMDB file
    damaged; ``kvserver.lmdb_store``). Only the newest file is kept.
    ``restore`` swaps a snapshot file in: a received one in O(1) (the
    receiver left a copy to consume), this node's own by copying it first
    (at start only). Raises ``StorageError`` when the file is missing."""

    def __init__(self, store: KvStore, snapshot_dir: str, *,
                 session_ttl_ms: int = DEFAULT_SESSION_TTL_MS,
                 max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        super().__init__(store, session_ttl_ms=session_ttl_ms, max_sessions=max_sessions)
        self.snapshot_dir = snapshot_dir
        os.makedirs(snapshot_dir, exist_ok=True)

    def snapshot(self) -> bytes:
        return FILE_SNAPSHOT_MARKER

    def save_snapshot(self, meta: SnapshotMeta) -> int:
        """Write the snapshot file for ``meta`` (storage worker): a copy of
        the store as of now, which holds at least every entry through
        ``meta.index``; drop older files. Its size in bytes."""
        path = snapshot_path(self.snapshot_dir, meta)
        size = self._store.copy_to(path)
        remove_older_snapshots(self.snapshot_dir, meta)
        return size

    def restore(self, data: bytes, meta: SnapshotMeta | None = None) -> None:
        if data != FILE_SNAPSHOT_MARKER:
            # An earlier release's snapshot (the state as bytes), or the
            # empty one: load it into the store.
            super().restore(data, meta)
            return
        assert meta is not None
        path = snapshot_path(self.snapshot_dir, meta)
        if not os.path.exists(path):
            raise StorageError(f"snapshot file {path} is missing: this node cannot "
                               f"restore its state at index {meta.index}")
        # A received file comes with its copy made (in the receiver's
        # thread); this node's own is copied here, which happens at start.
        install = install_copy(path)
        self._store.replace_with(install)
        OsFileSystem().fsync_dir(self.snapshot_dir)
        self._load()
        if not meta.membership.empty:
            # Written with the next applied batch (the copy may predate
            # this field, or hold an older membership).
            self._set_membership(meta.membership)
        if self._applied_index < meta.index:
            raise StorageError(f"snapshot file {path} holds entries through "
                               f"{self._applied_index}, not {meta.index}")
