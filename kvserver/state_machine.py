"""The replicated key-value state machine.

Contract (what Raft relies on, as hashicorp/raft's FSM states it):

* ``apply(index, data)`` is deterministic: every replica that applies the same
  entries in the same order reaches the same state and returns the same
  result. It never reads a clock, a random source or anything local; time
  enters only as the leader's stamp inside the command.
* ``snapshot() -> bytes`` captures the whole state (keys *and* client
  sessions: at-most-once must survive a restart from a snapshot). It is a
  versioned protobuf encoding, never pickle.
* ``restore(bytes)`` replaces the state with a snapshot's.

At-most-once (Raft dissertation 6.3): each client numbers its writes
``seq = 1, 2, ...`` and sends with each the lowest seq whose reply it has not
yet seen (``ack_seq``). The session table keeps, per client, the seqs applied
at or above ``ack_seq``; a request whose seq is below ``ack_seq`` or already
in that set is a duplicate and is not applied again. Replies to writes carry
no data, so remembering "applied" is enough. This holds with many writes of
one client in flight at once, in any order.

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
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

from kvserver import kv_pb2
from kvserver.limits import utf8_size

__all__ = [
    "Applied",
    "KvStateMachine",
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


@dataclass(slots=True)
class _Session:
    ack_seq: int = 1
    applied: set[int] = field(default_factory=set)
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


def encode_command(cmd: kv_pb2.Command) -> bytes:
    return cmd.SerializeToString()


def decode_command(data: bytes) -> kv_pb2.Command:
    cmd = kv_pb2.Command()
    cmd.ParseFromString(data)
    return cmd


class KvStateMachine:
    def __init__(
        self,
        *,
        session_ttl_ms: int = DEFAULT_SESSION_TTL_MS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self._data: dict[str, str] = {}
        # Ordered by last activity, least recent first: expiry pops the front.
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._clock_ms = 0

    # -- reads (served after ReadIndex confirms the applied state is current) --

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # -- the replicated part -------------------------------------------------

    @property
    def clock_ms(self) -> int:
        """Cluster time: the largest stamp applied so far (ms)."""
        return self._clock_ms

    def value_size(self, key: str) -> int:
        """Bytes of ``key``'s value (0 when absent), as ``kvserver.limits`` counts."""
        return utf8_size(self._data.get(key, ""))

    def apply(self, index: int, data: bytes) -> Applied:
        """Apply one committed command; what it did (``Applied``)."""
        cmd = decode_command(data)
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
        session.last_active_ms = self._clock_ms
        session.last_active_index = index
        session.acknowledge(cmd.ack_seq)
        seq = cmd.seq
        if session.is_duplicate(seq):
            return Applied.DUPLICATE
        if (cmd.op == kv_pb2.APPEND and cmd.max_value_bytes
                and self.value_size(cmd.key) + utf8_size(cmd.value) > cmd.max_value_bytes):
            return Applied.TOO_LARGE
        session.applied.add(seq)
        self._apply_op(cmd.op, cmd.key, cmd.value)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        return Applied.DONE

    def _apply_op(self, op: int, key: str, value: str) -> None:
        if op == kv_pb2.PUT:
            self._data[key] = value
        elif op == kv_pb2.APPEND:
            self._data[key] = self._data.get(key, "") + value
        elif op == kv_pb2.DELETE:
            self._data.pop(key, None)
        # Unknown ops (from a newer version) are ignored identically everywhere.

    def _expire_sessions(self) -> None:
        horizon = self._clock_ms - self.session_ttl_ms
        sessions = self._sessions
        while sessions:
            client_id, session = next(iter(sessions.items()))
            if session.last_active_ms >= horizon:
                break
            del sessions[client_id]

    # -- snapshots -----------------------------------------------------------

    def snapshot(self) -> bytes:
        snap = kv_pb2.KvSnapshot(version=SNAPSHOT_VERSION, clock_ms=self._clock_ms)
        snap.data.update(self._data)
        for client_id, s in self._sessions.items():
            snap.sessions.append(
                kv_pb2.Session(
                    client_id=client_id,
                    ack_seq=s.ack_seq,
                    applied_seqs=sorted(q for q in s.applied if q >= s.ack_seq),
                    last_active_ms=s.last_active_ms,
                    last_active_index=s.last_active_index,
                )
            )
        return snap.SerializeToString(deterministic=True)

    def restore(self, data: bytes) -> None:
        if not data:  # the empty snapshot: the state before any entry
            self._data, self._sessions, self._clock_ms = {}, OrderedDict(), 0
            return
        snap = kv_pb2.KvSnapshot()
        try:
            snap.ParseFromString(data)
        except Exception as exc:  # protobuf raises DecodeError; be explicit in the message
            raise SnapshotFormatError(f"undecodable KV snapshot: {exc}") from None
        if snap.version != SNAPSHOT_VERSION:
            raise SnapshotFormatError(
                f"KV snapshot version {snap.version}, this build reads {SNAPSHOT_VERSION}"
            )
        self._data = dict(snap.data)
        self._sessions = OrderedDict(
            (
                s.client_id,
                _Session(
                    ack_seq=s.ack_seq,
                    applied=set(s.applied_seqs),
                    last_active_ms=s.last_active_ms,
                    last_active_index=s.last_active_index,
                ),
            )
            for s in snap.sessions
        )
        self._clock_ms = snap.clock_ms
