"""What ``RaftNode``'s callers wait for, and when each wait ends:

* ``Proposals``: a proposed entry's future, settled when it is applied (or
  failed when another term's entry or a snapshot took its index);
* ``Reads``: ReadIndex reads (dissertation 6.4), batched into one quorum
  round, released once the state machine has applied up to their index;
* ``PeerReplies``: a peer's request waiting for the core's answer, matched
  by the ``Message.reply_to`` id the core copies into it (no guessing by
  message type or by counting Readys).

No asyncio here: every future is an ``rpc.Promise`` settled on the caller's
thread; a future a caller settled itself (a timeout) is left alone."""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

from raft.core import NotLeader, RaftCore
from raft.node_types import LeadershipLost
from raft.types import Entry, Message, ReadState
from rpc import Promise

__all__ = ["PeerReplies", "Proposals", "Reads", "fail"]


def fail(promise: Promise[Any], exc: BaseException) -> None:
    """Fail ``promise`` unless it is settled already: a caller may have
    given up on it (a timeout), and a synchronous callback of another
    promise may have settled it meanwhile."""
    if not promise.done():
        promise.set_exception(exc)


class Proposals:
    """index -> (term proposed in, future of (index, state machine result))."""

    def __init__(self) -> None:
        self._by_index: dict[int, tuple[int, Promise[tuple[int, Any]]]] = {}

    def add(self, index: int, term: int) -> Promise[tuple[int, Any]]:
        future: Promise[tuple[int, Any]] = Promise()
        self._by_index[index] = (term, future)
        return future

    def applied(self, entry: Entry, result: Any) -> None:
        waiting = self._by_index.pop(entry.index, None)
        if waiting is None:
            return
        term, future = waiting
        if future.done():
            return
        if term == entry.term:
            future.set_result((entry.index, result))
        else:
            future.set_exception(
                LeadershipLost(f"entry {entry.index} was overwritten by term {entry.term}"))

    def overtaken(self, index: int) -> None:
        """A snapshot through ``index`` was installed: what was proposed at
        those indexes cannot be told any more."""
        for i in [i for i in self._by_index if i <= index]:
            fail(self._by_index.pop(i)[1], LeadershipLost(f"entry {i} was replaced by a snapshot"))

    def fail_all(self, exc: BaseException) -> None:
        waiting, self._by_index = self._by_index, {}
        for _, future in waiting.values():
            fail(future, exc)


class Reads:
    """ReadIndex reads: batched, confirmed by a quorum round, released once applied."""

    def __init__(self) -> None:
        #: Not yet handed to the core: they will share one quorum round.
        self._batch: list[Promise[int]] = []
        #: context -> the reads its round confirms.
        self._by_context: dict[bytes, list[Promise[int]]] = {}
        #: (read index, future), released once applied >= read index.
        self._waiting_apply: deque[tuple[int, Promise[int]]] = deque()
        self._rounds = 0

    def add(self) -> Promise[int]:
        future: Promise[int] = Promise()
        self._batch.append(future)
        return future

    def start_round(self, core: RaftCore) -> None:
        """Hand the batched reads to the core as one round. Reads arriving
        together share it (etcd batches them the same way): the round
        confirms leadership as of its start, after every one began."""
        batch = [f for f in self._batch if not f.done()]
        self._batch = []
        if not batch:
            return
        self._rounds += 1
        context = struct.pack(">Q", self._rounds)
        try:
            core.read_index(context)
        except NotLeader as exc:
            for f in batch:
                fail(f, NotLeader(exc.leader))
            return
        self._by_context[context] = batch

    def confirmed(self, read: ReadState, applied: int) -> None:
        """The core released ``read``: its reads wait for the apply."""
        for future in self._by_context.pop(read.context, ()):
            if not future.done():
                self._waiting_apply.append((read.index, future))
        self.release(applied)

    def release(self, applied: int) -> None:
        waiting = self._waiting_apply
        while waiting and waiting[0][0] <= applied:
            index, future = waiting.popleft()
            if not future.done():
                future.set_result(index)

    def fail_unconfirmed(self, exc: BaseException) -> None:
        """Fail every read whose quorum round has not completed. Reads a
        quorum confirmed stay valid: their index was current then, and
        serving them once applied is safe."""
        futures = [f for batch in self._by_context.values() for f in batch] + self._batch
        self._by_context.clear()
        self._batch = []
        for future in futures:
            fail(future, exc)

    def fail_all(self, exc: BaseException) -> None:
        self.fail_unconfirmed(exc)
        waiting, self._waiting_apply = self._waiting_apply, deque()
        for _, future in waiting:
            fail(future, exc)


class PeerReplies:
    """Peer requests waiting for the core's answer, by ``reply_to`` id."""

    def __init__(self) -> None:
        self._by_id: dict[int, Promise[Message | None]] = {}
        self._next = 0

    def add(self) -> tuple[int, Promise[Message | None]]:
        self._next += 1
        future: Promise[Message | None] = Promise()
        self._by_id[self._next] = future
        return self._next, future

    def unanswered(self, reply_id: int) -> None:
        """The core ignored the request: answer it with nothing now."""
        future = self._by_id.pop(reply_id)
        if not future.done():
            future.set_result(None)

    def answer(self, msg: Message) -> bool:
        """Settle the call ``msg`` answers; False if that call has ended."""
        future = self._by_id.pop(msg.reply_to, None)
        if future is None or future.done():
            return False
        future.set_result(msg)
        return True

    def release_all(self) -> None:
        """Every waiting request gets an empty answer (the node stops)."""
        waiting, self._by_id = self._by_id, {}
        for future in waiting.values():
            if not future.done():
                future.set_result(None)
