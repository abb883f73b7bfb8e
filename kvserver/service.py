"""The ``KvServer`` RPC service: client requests in, Raft operations out.

Only the leader serves: a follower answers WRONG_LEADER with its best guess
of the leader (no forwarding, as in the seed). Writes are proposed to Raft
and answered once applied; reads go through ReadIndex (no log entry) and are
answered from the local state machine once it has applied up to the read
index, so a deposed or partitioned leader, which cannot get a quorum to
confirm its leadership, never answers a read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

from kvserver import kv_pb2
from kvserver.state_machine import KvStateMachine, encode_command
from raft.core import NotLeader, ProposalDropped
from raft.node import LeadershipLost, NodeStopped, RaftNode
from raft.types import NONE
from rpc import Promise, loop_deadlines, returns_future

__all__ = ["KV_SERVICE", "KvService"]

log = logging.getLogger("kvserver.service")

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]

R = TypeVar("R", kv_pb2.GetReply, kv_pb2.PutAppendReply, kv_pb2.BatchReply)
#: What a handler returns: the reply now, or a future of it.
Answer: TypeAlias = R | Promise[R]


def _put_ok() -> kv_pb2.PutAppendReply:
    return kv_pb2.PutAppendReply(err=kv_pb2.OK)


def _now_ms() -> int:
    # The leader's clock, carried in each entry, is what expires sessions
    # identically on every replica (state_machine.py).
    return int(time.time() * 1000)


def _command(request: kv_pb2.PutAppendRequest, stamp_ms: int) -> bytes:
    return encode_command(kv_pb2.Command(
        op=request.op,
        key=request.key,
        value=request.value,
        client_id=request.client_id,
        seq=request.seq,
        ack_seq=request.ack_seq,
        stamp_ms=stamp_ms,
    ))


def _outcome(future: Promise[Any]) -> BaseException | None:
    """Why ``future`` did not succeed (a timeout if it is not even done or
    was cancelled), None if it did."""
    if not future.done() or future.cancelled():
        return TimeoutError()
    return future.exception()


def _time_out(future: Promise[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class KvService:
    """Get, PutAppend and Batch answer from a ``Promise`` of the Raft node
    (no coroutine or Task per request: ``returns_future``), so a reply is
    written the moment the node applies its entry or confirms its read;
    each waits at most ``request_timeout`` and then answers TIMEOUT."""

    def __init__(
        self,
        node: RaftNode,
        state_machine: KvStateMachine,
        *,
        address: str = "",
        request_timeout: float = 2.0,
    ) -> None:
        self._node = node
        self._sm = state_machine
        self._address = address
        self.request_timeout = request_timeout
        self.shutting_down = False

    def _bound(self, future: Promise[Any]) -> None:
        """Fail ``future`` with TimeoutError after ``request_timeout``: the
        loop's shared deadline slots (``rpc.loop_deadlines``) rather than a
        ``call_later`` per request or ``asyncio.wait_for`` (a Task per
        request): this is the hot path. The node ignores a future resolved
        behind its back."""
        loop_deadlines(asyncio.get_running_loop()).add(
            self.request_timeout, (_time_out, future))

    def _leader_hint(self) -> int:
        leader = self._node.leader
        return leader if leader != NONE else -1

    def _refusal(self, exc: BaseException, reply_type: type[R]) -> R:
        """The reply for a request that did not complete."""
        if isinstance(exc, TimeoutError):
            return reply_type(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint())
        if isinstance(exc, NodeStopped):
            return reply_type(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        if isinstance(exc, (NotLeader, ProposalDropped, LeadershipLost)):
            return reply_type(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        raise exc

    def _answer(self, outcome: Promise[Any], reply_type: type[R],
                ok: Callable[[], R]) -> Promise[R]:
        """The reply future for the node's future ``outcome``, bounded by
        ``request_timeout`` (see ``_settle``)."""
        self._bound(outcome)
        reply: Promise[R] = Promise()
        outcome.add_done_callback(lambda f: self._settle(reply, f, reply_type, ok))
        return reply

    def _settle(self, reply: Promise[R], outcome: Promise[Any],
                reply_type: type[R], ok: Callable[[], R]) -> None:
        """Answer ``reply`` from the node's future ``outcome``: ``ok()`` on
        success, the matching refusal on a known failure, and anything else
        as a handler error (the provider reports it to the caller)."""
        if reply.done():
            return  # the provider gave up on the call
        exc = _outcome(outcome)
        try:
            reply.set_result(ok() if exc is None else self._refusal(exc, reply_type))
        except Exception as err:  # handed to the provider: HANDLER_ERROR
            reply.set_exception(err)

    def _serving(self, reply_type: type[R]) -> R | None:
        """A refusal if this node cannot serve requests now, else None."""
        if self.shutting_down:
            return reply_type(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        if not self._node.is_leader:
            return reply_type(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        return None

    @returns_future
    def Get(self, request: kv_pb2.GetRequest) -> Answer[kv_pb2.GetReply]:
        refused = self._serving(kv_pb2.GetReply)
        if refused is not None:
            return refused
        try:
            read = self._node.read_index_future()
        except (NotLeader, NodeStopped) as exc:
            return self._refusal(exc, kv_pb2.GetReply)
        key = request.key

        def value() -> kv_pb2.GetReply:
            # Applied up to the read index (or later): any state from here on
            # is linearizable for this read.
            v = self._sm.get(key)
            if v is None:
                return kv_pb2.GetReply(err=kv_pb2.NO_KEY, value="")
            return kv_pb2.GetReply(err=kv_pb2.OK, value=v)

        return self._answer(read, kv_pb2.GetReply, value)

    @returns_future
    def PutAppend(self, request: kv_pb2.PutAppendRequest) -> Answer[kv_pb2.PutAppendReply]:
        refused = self._serving(kv_pb2.PutAppendReply)
        if refused is not None:
            return refused
        try:
            applied = self._node.propose_future(_command(request, _now_ms()))
        except (NotLeader, ProposalDropped, NodeStopped) as exc:
            return self._refusal(exc, kv_pb2.PutAppendReply)
        return self._answer(applied, kv_pb2.PutAppendReply, _put_ok)

    @returns_future
    def Batch(self, request: kv_pb2.BatchRequest) -> Answer[kv_pb2.BatchReply]:
        """Many operations of one client: one Raft entry per write, proposed
        together, and one ReadIndex round for all gets; each operation is
        answered as ``Get``/``PutAppend`` would have, in request order."""
        refused = self._serving(kv_pb2.BatchReply)
        if refused is not None:
            return refused
        gets = request.gets
        writes = request.writes
        pending: list[Promise[Any]] = []
        try:
            written: list[Promise[tuple[int, Any]]] = []
            if writes:
                stamp_ms = _now_ms()
                written = self._node.propose_futures(
                    [_command(w, stamp_ms) for w in writes]
                )
                # They settle in index order: the last settles after all.
                pending.append(written[-1])
            read: Promise[int] | None = None
            if gets:
                read = self._node.read_index_future()
                pending.append(read)
        except (NotLeader, ProposalDropped, NodeStopped) as exc:
            # Nothing was proposed: propose_futures is all or none, and the
            # read cannot fail after it (same checks). Were it otherwise, a
            # retry with the same seqs would still apply each write once.
            return self._refusal(exc, kv_pb2.BatchReply)
        reply: Promise[kv_pb2.BatchReply] = Promise()
        if not pending:
            reply.set_result(kv_pb2.BatchReply(err=kv_pb2.OK))
            return reply
        keys = [g.key for g in gets]
        outstanding = len(pending)

        def settle(_: Promise[Any]) -> None:
            nonlocal outstanding
            outstanding -= 1
            if outstanding or reply.done():
                return
            try:
                reply.set_result(self._batch_reply(keys, read, written))
            except Exception as err:  # handed to the provider: HANDLER_ERROR
                reply.set_exception(err)

        for future in pending:
            self._bound(future)
            future.add_done_callback(settle)
        return reply

    def _batch_reply(
        self,
        keys: list[str],
        read: Promise[int] | None,
        written: list[Promise[tuple[int, Any]]],
    ) -> kv_pb2.BatchReply:
        reply = kv_pb2.BatchReply(err=kv_pb2.OK)
        if keys:
            assert read is not None
            exc = _outcome(read)
            if exc is None:
                # Applied up to the read index (or later): linearizable.
                value = self._sm.get
                add_get = reply.gets.add
                for key in keys:
                    v = value(key)
                    if v is None:
                        add_get(err=kv_pb2.NO_KEY)
                    else:
                        add_get(value=v)
            else:
                refusal = self._refusal(exc, kv_pb2.GetReply)
                for _ in keys:
                    reply.gets.append(refusal)
        add_write = reply.writes.add
        for future in written:
            exc = _outcome(future)
            if exc is None:
                add_write()
            else:
                reply.writes.append(self._refusal(exc, kv_pb2.PutAppendReply))
        return reply

    async def TransferLeader(
        self, request: kv_pb2.TransferLeaderRequest
    ) -> kv_pb2.TransferLeaderReply:
        """Hand leadership to ``request.to`` (-1: the most up-to-date
        follower); OK with the new leader once it leads. Not the hot path:
        a coroutine, bounded by the node (about an election timeout)."""
        reply = kv_pb2.TransferLeaderReply
        if self.shutting_down:
            return reply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        to = request.to
        if to < -1 or (to >= 0 and to not in self._node.config.peers):
            return reply(err=kv_pb2.BAD_REQUEST, leader_hint=self._leader_hint(),
                         error=f"node {to} is not in the cluster")
        try:
            leader = await self._node.transfer_leadership(None if to == -1 else to)
        except NotLeader:
            return reply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        except ValueError as exc:
            return reply(err=kv_pb2.BAD_REQUEST, leader_hint=self._leader_hint(),
                         error=str(exc))
        except TimeoutError as exc:
            return reply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint(), error=str(exc))
        except NodeStopped:
            return reply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        log.info("node %d: leadership transferred to node %d on request",
                 self._node.id, leader)
        return reply(err=kv_pb2.OK, leader=leader, leader_hint=leader)

    async def Status(self, request: kv_pb2.StatusRequest) -> kv_pb2.StatusReply:
        st = self._node.status()
        return kv_pb2.StatusReply(
            id=st.id,
            address=self._address,
            role=st.role.value,
            term=st.term,
            leader=self._leader_hint(),
            commit_index=st.commit,
            applied_index=st.applied,
            last_index=st.last_index,
            first_index=st.first_index,
            snapshot_index=st.snapshot_index,
            sessions=self._sm.session_count,
            keys=len(self._sm),
        )
