"""The ``KvServer`` RPC service: client requests in, Raft operations out.

Only the leader serves: a follower answers WRONG_LEADER with its best guess
of the leader (no forwarding, as in the seed). Writes (PUT, APPEND, DELETE,
CAS) are proposed to Raft and answered once applied; reads (Get, Scan) go
through ReadIndex (no log entry) and are answered from the local state
machine once it has applied up to the read index, so a deposed or
partitioned leader, which cannot get a quorum to confirm its leadership,
never answers a read. A Scan page is bounded in pairs and bytes
(``Limits.scan_page``) so its reply always fits in a frame.

Every request is checked on arrival, before anything is proposed: a field
the server cannot honour (seq 0, client_id 0, an unknown op, ack_seq above
seq, a DELETE carrying a value, an ``expected`` on anything but a CAS, too
many operations in a Batch) is refused with BAD_REQUEST, a size over a
limit (``kvserver.limits``) with TOO_LARGE; both carry an ``error`` text
and are never acknowledged and dropped.

Each write carries a *cluster time* stamp for session expiry: the state
machine's clock when this node became leader plus this node's monotonic
time since (LogCabin's ClusterClock). No node's wall clock is read, so a
skewed or jumping clock cannot expire sessions early (state_machine.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, TypeVar

from kvserver import kv_pb2
from kvserver.limits import SCAN_PAIR_OVERHEAD, Limits
from kvserver.state_machine import Applied, KvStateMachine, encode_command
from raft.core import ConfChangeError, ConfChangeRefused, NotLeader, ProposalDropped
from raft.membership import ConfChange, ConfChangeOp, parse_address
from raft.node import LeadershipLost, NodeStopped, RaftNode
from raft.types import NONE
from rpc import Promise, loop_deadlines, returns_future

__all__ = ["CLIENT_OPS", "KV_SERVICE", "LEARNER_READY", "KvService"]

log = logging.getLogger("kvserver.service")

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]

R = TypeVar("R", kv_pb2.GetReply, kv_pb2.ScanReply, kv_pb2.PutAppendReply,
            kv_pb2.BatchReply)
#: What a handler returns: the reply now, or a future of it.
Answer: TypeAlias = R | Promise[R]

#: The ops a client may send: MEMBER_SEEN is the leader's own record
#: (kvserver/seen.py), never a client's.
CLIENT_OPS = frozenset(kv_pb2.Op.values()) - {kv_pb2.MEMBER_SEEN}
_CHANGE_OPS = {kv_pb2.ADD_LEARNER: ConfChangeOp.ADD_LEARNER,
               kv_pb2.PROMOTE: ConfChangeOp.PROMOTE, kv_pb2.REMOVE: ConfChangeOp.REMOVE}
#: A learner is promoted only once its match index is at least this share
#: of the leader's (etcd's readyPercentThreshold).
LEARNER_READY = 0.9


def _merge(refusals: Sequence[R | None], replies: list[R]) -> list[R]:
    """Replies in request order: each refusal where it stood, the replies of
    the operations that went ahead, in order, in the other places."""
    rest = iter(replies)
    return [next(rest) if no is None else no for no in refusals]


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
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_db_bytes: int | None = None,
        cluster_id: str = "",
    ) -> None:
        """``cluster_id``: what ``Membership`` reports (the data dir's).
        ``max_db_bytes``: writes other than deletes are refused with
        NO_SPACE once the store uses that many bytes (etcd's quota: checked
        on the leader before a write enters the log, so every replica can
        apply every entry that does)."""
        self._node = node
        self._sm = state_machine
        self._address = address
        self.request_timeout = request_timeout
        self.limits = (limits or Limits()).validate()
        self.max_db_bytes = max_db_bytes
        self.cluster_id = cluster_id
        self.shutting_down = False
        # Cluster time (see the module doc): the term this node last led in,
        # the state machine's clock then, and the monotonic time then.
        self._clock = clock
        self._clock_term = -1
        self._clock_base_ms = 0
        self._clock_base = 0.0

    def _stamp_ms(self) -> int:
        """Cluster time now (ms), for the writes proposed now."""
        now = self._clock()
        term = self._node.term
        if term != self._clock_term:
            self._clock_term = term
            self._clock_base_ms = self._sm.clock_ms
            self._clock_base = now
        elapsed_ms = int((now - self._clock_base) * 1000)
        # Never behind what is applied: a lagging base only slows the clock.
        return max(self._sm.clock_ms, self._clock_base_ms + max(0, elapsed_ms))

    def _written(self, result: tuple[int, Applied]) -> kv_pb2.PutAppendReply:
        """The reply for a write the node applied: (index, what apply did).
        ``swapped`` is what a CAS needs; other writes ignore it."""
        applied = result[1]
        if applied is Applied.TOO_LARGE:
            return kv_pb2.PutAppendReply(
                err=kv_pb2.TOO_LARGE, leader_hint=-1,
                error=f"the value this APPEND would leave is over the limit "
                      f"max_value_bytes={self.limits.max_value_bytes}")
        return kv_pb2.PutAppendReply(err=kv_pb2.OK, swapped=applied is not Applied.NOT_SWAPPED)

    def _command(self, request: kv_pb2.PutAppendRequest, stamp_ms: int) -> bytes:
        cmd = kv_pb2.Command(
            op=request.op,
            key=request.key,
            value=request.value,
            client_id=request.client_id,
            seq=request.seq,
            ack_seq=request.ack_seq,
            stamp_ms=stamp_ms,
            max_value_bytes=self.limits.max_value_bytes,
        )
        if request.HasField("expected"):
            cmd.expected = request.expected
        return encode_command(cmd)

    # -- checks on arrival -------------------------------------------------

    def _get_refusal(self, request: kv_pb2.GetRequest) -> kv_pb2.GetReply | None:
        """The TOO_LARGE reply for a Get the server will not serve, else None."""
        problem = self.limits.key_error(request.key)
        if problem is None:
            return None
        return kv_pb2.GetReply(err=kv_pb2.TOO_LARGE, error=problem, leader_hint=-1)

    def _write_refusal(self, request: kv_pb2.PutAppendRequest) -> kv_pb2.PutAppendReply | None:
        """The BAD_REQUEST or TOO_LARGE reply for a write the server cannot
        apply correctly as sent (never acknowledged), else None."""
        problem: str | None
        if request.client_id == 0:
            problem = "client_id must not be 0"
        elif request.seq == 0:
            problem = "seq must be at least 1 (a client numbers its writes 1, 2, ...)"
        elif request.ack_seq > request.seq:
            problem = (f"ack_seq {request.ack_seq} is above seq {request.seq} (it is the "
                       f"lowest seq whose reply the client has not seen, this one included)")
        elif request.op not in CLIENT_OPS:
            problem = f"unknown op {request.op}"
        elif request.op == kv_pb2.DELETE and request.value:
            problem = "a DELETE carries no value"
        elif request.op != kv_pb2.CAS and request.HasField("expected"):
            problem = f"only a CAS carries an expected value (op {kv_pb2.Op.Name(request.op)})"
        else:
            limits = self.limits
            problem = limits.key_error(request.key) or limits.value_error(request.value)
            if problem is None and request.op == kv_pb2.APPEND:
                # Checked again when applied (state_machine.py): appends
                # still in the log may lengthen the value meanwhile.
                problem = limits.appended_error(
                    self._sm.value_size(request.key) + len(request.value))
            elif problem is None and request.op == kv_pb2.CAS:
                expected = request.expected
                problem = limits.value_error(expected, "expected value") or \
                    limits.request_error(len(request.key) + len(request.value) + len(expected))
            if problem is None:
                return self._quota_refusal(request)
            return kv_pb2.PutAppendReply(err=kv_pb2.TOO_LARGE, error=problem, leader_hint=-1)
        return kv_pb2.PutAppendReply(err=kv_pb2.BAD_REQUEST, error=problem, leader_hint=-1)

    def _quota_refusal(self, request: kv_pb2.PutAppendRequest) -> kv_pb2.PutAppendReply | None:
        """NO_SPACE for a write that may grow a store at ``max_db_bytes``."""
        quota = self.max_db_bytes
        if quota is None or request.op == kv_pb2.DELETE:
            return None
        used = self._sm.size_bytes()
        if used < quota:
            return None
        return kv_pb2.PutAppendReply(
            err=kv_pb2.NO_SPACE, leader_hint=-1,
            error=f"the store uses {used} bytes, at its quota max_db_bytes={quota}; "
                  f"delete keys to make room (reads and deletes still work)")

    def _scan_refusal(self, request: kv_pb2.ScanRequest) -> kv_pb2.ScanReply | None:
        """The TOO_LARGE reply for a Scan whose bounds are longer than any
        key may be (an on-disk store could not seek to them), else None."""
        problem = (self.limits.key_error(request.start, "scan start")
                   or self.limits.key_error(request.end, "scan end"))
        if problem is None:
            return None
        return kv_pb2.ScanReply(err=kv_pb2.TOO_LARGE, error=problem, leader_hint=-1)

    def _batch_refusal(self, request: kv_pb2.BatchRequest) -> kv_pb2.BatchReply | None:
        """A refusal of a whole Batch (too many operations or bytes), else None."""
        count = len(request.gets) + len(request.writes)
        if count > self.limits.max_batch_ops:
            return kv_pb2.BatchReply(
                err=kv_pb2.BAD_REQUEST, leader_hint=-1,
                error=f"a Batch of {count} operations, over the limit "
                      f"max_batch_ops={self.limits.max_batch_ops}")
        problem = self.limits.request_error(request.ByteSize())
        if problem is not None:
            return kv_pb2.BatchReply(err=kv_pb2.TOO_LARGE, error=problem, leader_hint=-1)
        return None

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
                ok: Callable[[Any], R]) -> Promise[R]:
        """The reply future for the node's future ``outcome``, bounded by
        ``request_timeout`` (see ``_settle``)."""
        self._bound(outcome)
        reply: Promise[R] = Promise()
        outcome.add_done_callback(lambda f: self._settle(reply, f, reply_type, ok))
        return reply

    def _settle(self, reply: Promise[R], outcome: Promise[Any],
                reply_type: type[R], ok: Callable[[Any], R]) -> None:
        """Answer ``reply`` from the node's future ``outcome``: ``ok(result)``
        on success, the matching refusal on a known failure, and anything
        else as a handler error (the provider reports it to the caller)."""
        if reply.done():
            return  # the provider gave up on the call
        exc = _outcome(outcome)
        try:
            reply.set_result(
                ok(outcome.result()) if exc is None else self._refusal(exc, reply_type))
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
        refused = self._serving(kv_pb2.GetReply) or self._get_refusal(request)
        if refused is not None:
            return refused
        try:
            read = self._node.read_index_future()
        except (NotLeader, NodeStopped) as exc:
            return self._refusal(exc, kv_pb2.GetReply)
        key = request.key

        def value(_: int) -> kv_pb2.GetReply:
            # Applied up to the read index (or later): any state from here on
            # is linearizable for this read.
            v = self._sm.get(key)
            if v is None:
                return kv_pb2.GetReply(err=kv_pb2.NO_KEY)
            return kv_pb2.GetReply(err=kv_pb2.OK, value=v)

        return self._answer(read, kv_pb2.GetReply, value)

    @returns_future
    def Scan(self, request: kv_pb2.ScanRequest) -> Answer[kv_pb2.ScanReply]:
        """One page of the pairs in [start, end) in key order, read like
        ``Get`` (ReadIndex, then the state machine): at most the request's
        limit (0: ``DEFAULT_SCAN_LIMIT``) and the limits' page bounds; with
        ``more`` and ``next_start`` when the range goes on."""
        refused = self._serving(kv_pb2.ScanReply) or self._scan_refusal(request)
        if refused is not None:
            return refused
        try:
            read = self._node.read_index_future()
        except (NotLeader, NodeStopped) as exc:
            return self._refusal(exc, kv_pb2.ScanReply)
        start, end = request.start, request.end or None
        limit, max_bytes = self.limits.scan_page(request.limit)

        def page(_: int) -> kv_pb2.ScanReply:
            # Applied up to the read index (or later): linearizable, as Get.
            pairs, next_start = self._sm.scan(start, end, limit, max_bytes,
                                              overhead=SCAN_PAIR_OVERHEAD)
            reply = kv_pb2.ScanReply(err=kv_pb2.OK)
            add = reply.pairs.add
            for key, value in pairs:
                add(key=key, value=value)
            if next_start is not None:
                reply.more = True
                reply.next_start = next_start
            return reply

        return self._answer(read, kv_pb2.ScanReply, page)

    @returns_future
    def PutAppend(self, request: kv_pb2.PutAppendRequest) -> Answer[kv_pb2.PutAppendReply]:
        refused = self._serving(kv_pb2.PutAppendReply) or self._write_refusal(request)
        if refused is not None:
            return refused
        try:
            applied = self._node.propose_future(self._command(request, self._stamp_ms()))
        except (NotLeader, ProposalDropped, NodeStopped) as exc:
            return self._refusal(exc, kv_pb2.PutAppendReply)
        return self._answer(applied, kv_pb2.PutAppendReply, self._written)

    @returns_future
    def Batch(self, request: kv_pb2.BatchRequest) -> Answer[kv_pb2.BatchReply]:
        """Many operations of one client: one Raft entry per write, proposed
        together, and one ReadIndex round for all gets; each operation is
        answered as ``Get``/``PutAppend`` would have, in request order (an
        operation refused on arrival gets its own refusal, the others go on)."""
        refused = self._serving(kv_pb2.BatchReply) or self._batch_refusal(request)
        if refused is not None:
            return refused
        get_refusals = [self._get_refusal(g) for g in request.gets]
        write_refusals = [self._write_refusal(w) for w in request.writes]
        keys = [g.key for g, no in zip(request.gets, get_refusals, strict=True) if no is None]
        writes = [w for w, no in zip(request.writes, write_refusals, strict=True) if no is None]
        pending: list[Promise[Any]] = []
        try:
            written: list[Promise[tuple[int, Applied]]] = []
            if writes:
                stamp_ms = self._stamp_ms()
                written = self._node.propose_futures(
                    [self._command(w, stamp_ms) for w in writes]
                )
                # They settle in index order: the last settles after all.
                pending.append(written[-1])
            read: Promise[int] | None = None
            if keys:
                read = self._node.read_index_future()
                pending.append(read)
        except (NotLeader, ProposalDropped, NodeStopped) as exc:
            # Nothing was proposed: propose_futures is all or none, and the
            # read cannot fail after it (same checks). Were it otherwise, a
            # retry with the same seqs would still apply each write once.
            return self._refusal(exc, kv_pb2.BatchReply)

        def answer() -> kv_pb2.BatchReply:
            reply = kv_pb2.BatchReply(err=kv_pb2.OK)
            reply.gets.extend(_merge(get_refusals, self._read_replies(keys, read)))
            reply.writes.extend(_merge(write_refusals, self._write_replies(written)))
            return reply

        reply: Promise[kv_pb2.BatchReply] = Promise()
        if not pending:
            reply.set_result(answer())
            return reply
        outstanding = len(pending)

        def settle(_: Promise[Any]) -> None:
            nonlocal outstanding
            outstanding -= 1
            if outstanding or reply.done():
                return
            try:
                reply.set_result(answer())
            except Exception as err:  # handed to the provider: HANDLER_ERROR
                reply.set_exception(err)

        for future in pending:
            self._bound(future)
            future.add_done_callback(settle)
        return reply

    def _read_replies(self, keys: list[bytes], read: Promise[int] | None) -> list[kv_pb2.GetReply]:
        """One reply per key, once ``read`` (their ReadIndex round) is settled."""
        if not keys:
            return []
        assert read is not None
        exc = _outcome(read)
        if exc is not None:
            return [self._refusal(exc, kv_pb2.GetReply)] * len(keys)
        # Applied up to the read index (or later): linearizable.
        value = self._sm.get
        replies = []
        for key in keys:
            v = value(key)
            replies.append(kv_pb2.GetReply(err=kv_pb2.NO_KEY) if v is None
                           else kv_pb2.GetReply(value=v))
        return replies

    def _write_replies(
        self, written: list[Promise[tuple[int, Applied]]]
    ) -> list[kv_pb2.PutAppendReply]:
        replies = []
        for future in written:
            exc = _outcome(future)
            replies.append(self._written(future.result()) if exc is None
                           else self._refusal(exc, kv_pb2.PutAppendReply))
        return replies

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
        if to < -1 or (to >= 0 and to not in self._node.membership.voters):
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

    def _members(self) -> list[kv_pb2.Member]:
        membership = self._node.membership
        progress = self._node.member_progress()
        seen = self._sm.seen_members
        return [
            kv_pb2.Member(
                id=n, address=membership.address(n),
                role=kv_pb2.LEARNER if n in membership.learners else kv_pb2.VOTER,
                match_index=progress[n].match if n in progress else 0,
                seen=n in seen,
            )
            for n in sorted(membership.members)
        ]

    async def Membership(self, request: kv_pb2.MembershipRequest) -> kv_pb2.MembershipReply:
        """The membership in this node's log (dissertation 4.1: the latest,
        committed or not), with the leader's match indexes when it leads,
        which members the cluster has heard from (``seen``: the replicated
        marks of kvserver/seen.py, so any member knows them) and the data
        dir's cluster ID. An empty data dir asks this before it starts
        (kvserver/discovery.py)."""
        if self.shutting_down:
            return kv_pb2.MembershipReply(err=kv_pb2.SHUTTING_DOWN, leader=-1)
        st = self._node.status()
        return kv_pb2.MembershipReply(
            err=kv_pb2.OK, cluster_id=self.cluster_id, members=self._members(),
            leader=self._leader_hint(), id=st.id, commit_index=st.commit)

    async def ChangeMembership(
        self, request: kv_pb2.MemberChangeRequest
    ) -> kv_pb2.MemberChangeReply:
        """One membership change (``RaftNode.change_membership``); OK once
        committed and applied here, with the membership it made. Checked
        first, before anything is proposed: the id, the address of a new
        learner, that the change fits the membership, and that a learner
        to promote has caught up (``_promotion_refusal``). The removal of
        this leader itself is done by the next one: it hands leadership
        over and answers WRONG_LEADER naming the new leader."""
        reply = kv_pb2.MemberChangeReply
        if self.shutting_down:
            return reply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        if not self._node.is_leader:
            return reply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        op = _CHANGE_OPS.get(request.op)
        problem: str | None = None
        if op is None:
            problem = f"unknown membership change op {request.op}"
        elif request.id < 0:
            problem = f"node id {request.id} is negative"
        elif op is ConfChangeOp.ADD_LEARNER:
            try:
                parse_address(request.address)
            except ValueError as exc:
                problem = str(exc)
        pending = self._node.membership_index
        if problem is None and pending > self._node.status().commit:
            # Checked before the change is: against an uncommitted
            # membership a retry of that very change would look done
            # ("already a learner") while it may still be lost.
            return reply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint(),
                         error=f"the previous membership change (log index {pending}) is "
                               f"not committed yet")
        if problem is None and op is not None:
            change = ConfChange(op, request.id,
                                request.address if op is ConfChangeOp.ADD_LEARNER else "")
            try:
                self._node.membership.applied(change)
            except ConfChangeError as exc:
                problem = str(exc)
            else:
                if op is ConfChangeOp.PROMOTE:
                    problem = self._promotion_refusal(request.id)
        if problem is not None or op is None:
            return reply(err=kv_pb2.BAD_REQUEST, leader_hint=self._leader_hint(),
                         error=problem or "")
        if op is ConfChangeOp.REMOVE and request.id == self._node.id:
            return await self._hand_over_before_removal()
        try:
            await asyncio.wait_for(self._node.change_membership(change), self.request_timeout)
        except ConfChangeError as exc:
            return reply(err=kv_pb2.BAD_REQUEST, leader_hint=self._leader_hint(),
                         error=str(exc))
        except ConfChangeRefused as exc:
            # Not yet (the previous change or this leader's first entry is
            # not committed): TIMEOUT, which a client retries (kv.proto).
            return reply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint(), error=str(exc))
        except TimeoutError:
            return reply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint(),
                         error=f"{change} not committed within {self.request_timeout:g} s")
        except LeadershipLost:
            # Proposed, then deposed: the entry may still commit. TIMEOUT
            # (may or may not have happened), not WRONG_LEADER (did not).
            return reply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint(),
                         error=f"node {self._node.id} lost leadership before {change} "
                               f"committed")
        except (NotLeader, ProposalDropped):
            return reply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        except NodeStopped:
            return reply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        log.info("node %d: membership change done: %s", self._node.id, change)
        return reply(err=kv_pb2.OK, leader_hint=self._leader_hint(), members=self._members())

    def _promotion_refusal(self, learner: int) -> str | None:
        """Why ``learner`` may not be promoted yet, or None. etcd's rule
        (``isLearnerReady``, server/etcdserver/server.go): its match index
        must be at least ``LEARNER_READY`` of the leader's own. A learner
        far behind would make a voter that holds up commits (it counts
        toward the majority as soon as the entry is in the log) and, in a
        small cluster, could cost the quorum until it catches up."""
        progress = self._node.member_progress()
        me = progress.get(self._node.id)
        leader_match = me.match if me is not None else self._node.status().last_index
        peer = progress.get(learner)
        match = peer.match if peer is not None else 0
        if match >= leader_match * LEARNER_READY:
            return None
        return (f"learner {learner} has {match} of {leader_match} entries; promote it "
                f"once it has {LEARNER_READY:.0%}")

    async def _hand_over_before_removal(self) -> kv_pb2.MemberChangeReply:
        """The leader is asked to remove itself: hand leadership to the most
        up-to-date voter first and send the client there (dissertation
        4.2.2 lets a leader manage its own removal and step down after;
        handing over first spares the cluster the wait for an election and
        keeps a leader that is leaving from running the change)."""
        reply = kv_pb2.MemberChangeReply
        me = self._node.id
        try:
            new = await self._node.transfer_leadership()
        except NotLeader:
            return reply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        except (TimeoutError, ValueError) as exc:
            return reply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint(),
                         error=f"node {me} leads and could not hand over before its "
                               f"removal: {exc}")
        except NodeStopped:
            return reply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        log.info("node %d: handed leadership to node %d before its own removal", me, new)
        return reply(err=kv_pb2.WRONG_LEADER, leader_hint=new,
                     error=f"node {me} handed leadership to node {new}, which removes it")

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
