"""ReadIndex bookkeeping on the leader (dissertation 6.4; etcd ``read_only.go``).

A read request records the leader's commit index at the time it arrives
(the *read index*) and a caller-chosen ``context``. The leader then sends a
heartbeat round carrying that context; once a majority (the leader included)
has answered it, the leader knows it was still the leader when the request
arrived, and every request queued up to and including that context can be
served at its read index.

Requests are answered in arrival order: an ack for a later context also
confirms leadership for every earlier one, so they are released together.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from raft.quorum import has_quorum

__all__ = ["ReadIndexStatus", "ReadOnly"]


@dataclass(slots=True)
class ReadIndexStatus:
    index: int
    context: bytes
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._pending: dict[bytes, ReadIndexStatus] = {}
        self._queue: list[bytes] = []

    def __len__(self) -> int:
        return len(self._queue)

    def add_request(self, index: int, context: bytes, leader: int) -> bool:
        """Queue a read at ``index``; the leader's own ack is implicit.
        Returns False (and ignores it) if ``context`` is already pending."""
        if context in self._pending:
            return False
        self._pending[context] = ReadIndexStatus(index, context, {leader})
        self._queue.append(context)
        return True

    def recv_ack(self, peer: int, context: bytes, voters: Collection[int]) -> bool:
        """Record ``peer``'s heartbeat ack for ``context``. Returns whether the
        request now has a quorum of acks."""
        status = self._pending.get(context)
        if status is None:
            return False
        status.acks.add(peer)
        return has_quorum(voters, status.acks)

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Release ``context`` and every request queued before it, in order."""
        if context not in self._pending:
            return []
        cut = self._queue.index(context) + 1
        released = [self._pending.pop(c) for c in self._queue[:cut]]
        del self._queue[:cut]
        return released

    def last_pending_context(self) -> bytes:
        """The newest pending context (b"" if none). Regular heartbeats carry
        it, so a lost heartbeat round is retried by the next one."""
        return self._queue[-1] if self._queue else b""

    def reset(self) -> None:
        """Drop every pending request (the leader stepped down; the driver
        times the callers out)."""
        self._pending.clear()
        self._queue.clear()
