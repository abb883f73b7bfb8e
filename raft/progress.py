"""What the leader knows about each follower (etcd ``tracker/progress.go``).

``match`` is the highest index known replicated on the peer; ``next`` the
next index to send (paper Figure 2, "Volatile state on leaders"). On top of
the paper, a peer is in one of three states that decide how the leader
sends to it:

* PROBE: the leader does not know where the logs agree. It sends one
  APPEND at a time and waits for the answer (``probe_sent``), backing
  ``next`` off on rejection (paper 5.3, with the fast back-up hint).
* REPLICATE: the logs agree up to ``match``. The leader streams APPENDs
  optimistically, advancing ``next`` as it sends, bounded by ``Inflights``
  (count and bytes) so a slow follower does not get an unbounded backlog.
* SNAPSHOT: the entries the peer needs are compacted; the leader is sending
  a snapshot (in chunks) and sends no APPENDs until the peer reports it.
"""

from __future__ import annotations

import enum
from collections import deque

from raft.types import Snapshot

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


#: Looked up once: ``is_paused`` runs before every APPEND, and an attribute
#: lookup on an enum class is slow on Python 3.11 (see ``raft.core.MT``).
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE


class Inflights:
    """The APPENDs sent but not yet acknowledged, as (last index, bytes),
    in send order. Full once either bound is reached."""

    __slots__ = ("_bytes", "_queue", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int = 0) -> None:
        if max_count <= 0:
            raise ValueError("max_count must be positive")
        self.max_count = max_count
        self.max_bytes = max_bytes  # 0 = unbounded
        self._queue: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, index: int, size: int) -> None:
        if self.full():
            raise RuntimeError("Inflights.add on a full window")
        if self._queue and index <= self._queue[-1][0]:
            raise RuntimeError(f"inflight index {index} not increasing")
        self._queue.append((index, size))
        self._bytes += size

    def free_le(self, index: int) -> None:
        """Forget every message whose last index is <= ``index`` (acked)."""
        q = self._queue
        while q and q[0][0] <= index:
            self._bytes -= q.popleft()[1]

    def free_first_one(self) -> None:
        """Forget the oldest message (its ack is presumed lost), so that a
        full window can send again."""
        if self._queue:
            self._bytes -= self._queue.popleft()[1]

    def full(self) -> bool:
        return len(self._queue) >= self.max_count or (
            self.max_bytes > 0 and self._bytes >= self.max_bytes
        )

    def reset(self) -> None:
        self._queue.clear()
        self._bytes = 0


class Progress:
    __slots__ = (
        "inflights",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snap",
        "snap_idle_ticks",
        "snap_offset",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        #: PROBE only: an APPEND is outstanding; wait for its answer.
        self.probe_sent = False
        #: Heard from the peer since the last check-quorum round (dissertation 6.2).
        self.recent_active = False
        #: SNAPSHOT only: index of the snapshot being sent.
        self.pending_snapshot = 0
        #: SNAPSHOT only: the snapshot being sent, the byte offset the peer
        #: acknowledged, and ticks since the last chunk went out (resend timer).
        self.snap: Snapshot | None = None
        self.snap_offset = 0
        self.snap_idle_ticks = 0
        self.inflights = Inflights(max_inflight, max_inflight_bytes)

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.value}, "
            f"inflight={len(self.inflights)})"
        )

    # -- state transitions --------------------------------------------------

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snap = None
        self.snap_offset = 0
        self.snap_idle_ticks = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        # After a snapshot, the peer holds at least the snapshot's index.
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot.meta.index
        self.snap = snapshot

    # -- events -------------------------------------------------------------

    def maybe_update(self, index: int) -> bool:
        """The peer acknowledged everything up to ``index``. Returns whether
        that was news (``match`` moved)."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected an APPEND whose previous index was ``rejected``;
        ``match_hint`` is the highest index at which the logs may agree (from
        the fast back-up hint). Returns False for a stale rejection."""
        if self.state is ProgressState.REPLICATE:
            # Anything at or below match was acked already: stale.
            if rejected <= self.match:
                return False
            self.next = max(self.match + 1, min(rejected, match_hint + 1))
            return True
        # PROBE (or SNAPSHOT): only the answer to the last probe counts.
        if self.next - 1 != rejected:
            return False
        self.next = max(self.match + 1, min(rejected, match_hint + 1))
        self.probe_sent = False
        return True

    def lost_entries(self, last_index: int) -> None:
        """The peer holds entries only up to ``last_index``, fewer than it
        acknowledged (its data dir was emptied): start over from there, as
        for a new peer. The commit index never moves back, so nothing
        decided on the old acknowledgements is undone here; refusing such a
        voter is the node's identity check's job."""
        self._reset_state(ProgressState.PROBE)
        self.match = last_index
        self.next = last_index + 1

    def sent_entries(self, last_index: int, count: int, size: int) -> None:
        """An APPEND carrying ``count`` entries (``size`` bytes) up to
        ``last_index`` went out."""
        if self.state is _REPLICATE:
            if count > 0:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state is _PROBE:
            self.probe_sent = True
        else:
            raise RuntimeError("sending entries to a peer in SNAPSHOT state")

    def is_paused(self) -> bool:
        """Whether the leader must hold further APPENDs to this peer."""
        state = self.state
        if state is _PROBE:
            return self.probe_sent
        if state is _REPLICATE:
            return self.inflights.full()
        return True
