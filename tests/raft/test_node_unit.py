"""RaftNode on its own: a single-node cluster with in-memory storage and a
transport that records what it is given (no sockets: this is the driver's
unit test; the real-socket clusters are in test_node_cluster.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from raft.node import NodeConfig, NodeStopped, RaftNode
from raft.storage import MemoryStorage, StorageError
from raft.types import Entry, HardState, Message, MessageType, Snapshot
from tests.raft.cluster import RecordingStateMachine


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed = False

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    async def close(self) -> None:
        self.closed = True


class FailingStorage(MemoryStorage):
    """Fails every save once ``fail`` is set, like a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.closed = False

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None, *, sync: bool = True) -> bool:
        if self.fail:
            raise StorageError("disk full (ENOSPC)")
        return super().save(hard_state, entries, snapshot, sync=sync)

    def close(self) -> None:
        self.closed = True


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 20))


def single_node(storage: MemoryStorage | None = None,
                peers: frozenset[int] = frozenset({0})) -> tuple[RaftNode, RecordingTransport]:
    transport = RecordingTransport()
    node = RaftNode(NodeConfig(id=0, peers=peers, tick_interval=0.005, seed=1),
                    storage or MemoryStorage(), RecordingStateMachine(), transport)
    return node, transport


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_single_node_proposes_applies_and_reads() -> None:
    async def scenario() -> None:
        node, transport = single_node()
        await node.start()
        await until(lambda: node.is_leader)
        results = await asyncio.gather(*(node.propose(b"v%d" % i) for i in range(100)))
        # The state machine's result (here: the index) comes back to the proposer.
        assert [r for _, r in results] == [i for i, _ in results]
        assert await node.read_index() >= max(i for i, _ in results)
        assert node.metrics.saves < 100, "proposals should share fsyncs"
        await node.stop()
        assert transport.closed and transport.sent == []
        with pytest.raises(NodeStopped):
            await node.propose(b"late")

    run(scenario)


def test_storage_failure_stops_the_node_and_fails_pending_work() -> None:
    async def scenario() -> None:
        storage = FailingStorage()
        node, _ = single_node(storage)
        await node.start()
        await until(lambda: node.is_leader)
        await node.propose(b"ok")
        storage.fail = True
        with pytest.raises(NodeStopped, match="disk full"):
            await node.propose(b"lost")
        failure = await asyncio.wait_for(node.wait_failed(), 5)
        assert "disk full" in str(failure)
        await node.stop()
        assert storage.closed

    run(scenario)


def test_ignored_request_gets_an_empty_reply() -> None:
    async def scenario() -> None:
        node, _ = single_node(peers=frozenset({0, 1}))
        await node.start()
        # A vote request is answered only after the vote is persisted.
        vote = Message(MessageType.VOTE, src=1, dst=0, term=5, log_term=0, index=0)
        reply = await asyncio.wait_for(node.handle_request(vote), 5)
        assert reply is not None and reply.type is MessageType.VOTE_RESPONSE
        assert not reply.reject
        assert node._storage.initial_state()[0].vote == 1  # durable before the reply
        # A heartbeat from a stale leader is answered with our newer term so
        # that it steps down (or ignored), never left hanging.
        stale = Message(MessageType.HEARTBEAT, src=1, dst=0, term=1)
        reply = await asyncio.wait_for(node.handle_request(stale), 5)
        assert reply is None or (reply.type is MessageType.APPEND_RESPONSE and reply.term == 5)
        # A message type that gets no answer on the call: empty reply at once.
        timeout_now = Message(MessageType.TIMEOUT_NOW, src=1, dst=0, term=1)
        assert await asyncio.wait_for(node.handle_request(timeout_now), 5) is None
        await node.stop()

    run(scenario)
