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
from typing import Any, TypeVar

from kvserver import kv_pb2
from kvserver.state_machine import KvStateMachine, encode_command
from raft.core import NotLeader, ProposalDropped
from raft.node import LeadershipLost, NodeStopped, RaftNode
from raft.types import NONE

__all__ = ["KV_SERVICE", "KvService"]

log = logging.getLogger("kvserver.service")

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]


T = TypeVar("T")


def _fail_with_timeout(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class KvService:
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

    async def _bounded(self, future: asyncio.Future[T]) -> T:
        """Await ``future`` for at most ``request_timeout`` (TimeoutError).

        A timer that fails the future, rather than ``asyncio.wait_for`` (a
        Task per request) or ``asyncio.timeout`` (needs a Task, and the
        provider runs handlers eagerly, outside one): this is the hot path."""
        timer = asyncio.get_running_loop().call_later(
            self.request_timeout, _fail_with_timeout, future
        )
        try:
            return await future
        finally:
            timer.cancel()

    def _leader_hint(self) -> int:
        leader = self._node.leader
        return leader if leader != NONE else -1

    async def Get(self, request: kv_pb2.GetRequest) -> kv_pb2.GetReply:
        if self.shutting_down:
            return kv_pb2.GetReply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        if not self._node.is_leader:
            return kv_pb2.GetReply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        try:
            await self._bounded(self._node.read_index_future())
        except (NotLeader, ProposalDropped):
            return kv_pb2.GetReply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        except TimeoutError:
            return kv_pb2.GetReply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint())
        except NodeStopped:
            return kv_pb2.GetReply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        value = self._sm.get(request.key)
        if value is None:
            return kv_pb2.GetReply(err=kv_pb2.NO_KEY, value="")
        return kv_pb2.GetReply(err=kv_pb2.OK, value=value)

    async def PutAppend(self, request: kv_pb2.PutAppendRequest) -> kv_pb2.PutAppendReply:
        if self.shutting_down:
            return kv_pb2.PutAppendReply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        if not self._node.is_leader:
            return kv_pb2.PutAppendReply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        command = kv_pb2.Command(
            op=request.op,
            key=request.key,
            value=request.value,
            client_id=request.client_id,
            seq=request.seq,
            ack_seq=request.ack_seq,
            # The leader's clock, carried in the entry, is what expires
            # sessions identically on every replica (state_machine.py).
            stamp_ms=int(time.time() * 1000),
        )
        try:
            await self._bounded(self._node.propose_future(encode_command(command)))
        except (NotLeader, ProposalDropped, LeadershipLost):
            return kv_pb2.PutAppendReply(err=kv_pb2.WRONG_LEADER, leader_hint=self._leader_hint())
        except TimeoutError:
            return kv_pb2.PutAppendReply(err=kv_pb2.TIMEOUT, leader_hint=self._leader_hint())
        except NodeStopped:
            return kv_pb2.PutAppendReply(err=kv_pb2.SHUTTING_DOWN, leader_hint=-1)
        return kv_pb2.PutAppendReply(err=kv_pb2.OK)

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
