"""RaftNode on its own: a single-node cluster with in-memory storage and a
transport that records what it is given (no sockets: this is the driver's
unit test; the real-socket clusters are in test_node_cluster.py).

Time here is what the test says: ticks come from a ``ManualTicker`` and the
storage worker reads a ``FakeClock`` that a "slow" fsync advances, so no
test waits for real time to pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from raft.membership import Membership
from raft.node import NodeConfig, NodeStopped, RaftNode
from raft.node_ticker import ManualTicker
from raft.storage import MemoryStorage, StorageError
from raft.storage_worker import StorageWorker
from raft.types import Entry, HardState, Message, MessageType, Snapshot, SnapshotMeta
from tests.raft.cluster import RecordingStateMachine


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed = False

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        pass

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


class FakeClock:
    """Seconds that pass only when a test (or a fake disk) says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def single_node(storage: MemoryStorage | None = None,
                peers: frozenset[int] = frozenset({0}),
                slow_disk_hold: float = 10.0) -> tuple[RaftNode, RecordingTransport]:
    """A node with manual ticks; its storage worker reads the storage's
    ``clock`` if it has one (a slow fake disk advances it)."""
    transport = RecordingTransport()
    storage = storage or MemoryStorage()
    clock = getattr(storage, "clock", FakeClock())
    node = RaftNode(NodeConfig(id=0, peers=peers, seed=1), storage,
                    RecordingStateMachine(), transport, ticker=ManualTicker(),
                    storage_worker=StorageWorker("test-storage", clock=clock,
                                                 slow_disk_hold=slow_disk_hold))
    return node, transport


async def until(cond: Callable[[], bool]) -> None:
    """Poll ``cond`` while the loop runs the node (bounded: 5 s)."""
    deadline = asyncio.get_running_loop().time() + 5
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.001)


async def elect(node: RaftNode) -> None:
    """A single-node cluster elects itself once its vote is durable."""
    node.campaign()
    await until(lambda: node.is_leader)


def test_single_node_proposes_applies_and_reads() -> None:
    async def scenario() -> None:
        node, transport = single_node()
        await node.start()
        await elect(node)
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
        await elect(node)
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


class DeferredSyncStorage(MemoryStorage):
    """Like FileStorage: ``save(sync=False)`` leaves data not yet durable
    until ``sync()``. Records the durable log end and every sync."""

    def __init__(self) -> None:
        super().__init__()
        self.durable_last = 0
        self.durable_vote = 0
        self.syncs = 0

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None, *, sync: bool = True) -> bool:
        super().save(hard_state, entries, snapshot, sync=sync)
        if sync:
            self.sync()
            return False
        return bool(entries) or hard_state is not None

    def sync(self) -> None:
        self.syncs += 1
        self.durable_last = self.last_index()
        self.durable_vote = self.hard_state.vote


class SendCheckingNode(RaftNode):
    """Records, at the moment each message leaves the driver, what the
    storage had made durable by then."""

    sent_when: list[tuple[Message, int, int]]

    def send(self, msg: Message) -> None:
        storage = self._storage
        assert isinstance(storage, DeferredSyncStorage)
        self.sent_when.append((msg, storage.durable_last, storage.durable_vote))
        super().send(msg)


def test_follower_answers_only_what_is_durable() -> None:
    """An append acknowledgement or a vote is a promise about the disk: the
    driver must not send it before the fsync that covers it (paper 5.3)."""
    async def scenario() -> None:
        storage = DeferredSyncStorage()
        node = SendCheckingNode(
            NodeConfig(id=0, peers=frozenset({0, 1, 2}), seed=1),
            storage, RecordingStateMachine(), RecordingTransport(), ticker=ManualTicker())
        node.sent_when = []
        await node.start()
        vote = Message(MessageType.VOTE, src=1, dst=0, term=2, log_term=0, index=0)
        reply = await asyncio.wait_for(node.handle_request(vote), 5)
        assert reply is not None and not reply.reject
        for first in (1, 4, 7):
            entries = tuple(Entry(index=i, term=2, data=b"x") for i in range(first, first + 3))
            append = Message(MessageType.APPEND, src=1, dst=0, term=2, log_term=2 if first > 1
                             else 0, index=first - 1, entries=entries, commit=first - 1)
            reply = await asyncio.wait_for(node.handle_request(append), 5)
            assert reply is not None and reply.type is MessageType.APPEND_RESPONSE
            assert not reply.reject and reply.index == first + 2
        await node.stop()
        answers = [(m.type, m.index, last, vote) for m, last, vote in node.sent_when]
        assert answers[0][0] is MessageType.VOTE_RESPONSE and answers[0][3] == 1, \
            "vote granted before it was durable"
        acks = [a for a in answers if a[0] is MessageType.APPEND_RESPONSE]
        assert [a[1] for a in acks] == [3, 6, 9]
        assert all(durable >= index for _, index, durable, _ in acks), \
            f"acknowledged before durable: {acks}"

    run(scenario)


async def propose_on_a_single_node(storage: DeferredSyncStorage, count: int,
                                   slow_disk_hold: float = 10.0) -> None:
    """Propose ``count`` entries one by one; each must be durable (on the
    leader's disk, its whole quorum) by the time it is applied."""
    node, _ = single_node(storage, slow_disk_hold=slow_disk_hold)
    await node.start()
    await elect(node)
    for i in range(count):
        index, _ = await node.propose(b"v%d" % i)
        assert storage.durable_last >= index, "applied before the leader's fsync"
    await node.stop()


def test_leader_counts_itself_only_once_durable() -> None:
    """A single-node leader commits (and answers the proposer) only after its
    own fsync: with no peers, its disk is the whole quorum."""
    storage = DeferredSyncStorage()
    run(lambda: propose_on_a_single_node(storage, 20))
    assert storage.syncs >= 1


class SlowSyncStorage(DeferredSyncStorage):
    """Every fsync takes 20 ms of the node's (fake) clock; records which
    thread ran it."""

    def __init__(self) -> None:
        super().__init__()
        self.sync_threads: list[str] = []
        self.clock = FakeClock()

    def sync(self) -> None:
        self.sync_threads.append(threading.current_thread().name)
        self.clock.now += 0.02
        super().sync()


def test_a_follower_with_a_slow_disk_syncs_off_its_loop() -> None:
    """Inline while fast; after a slow fsync the worker thread takes over, so
    the node's loop (RPCs, ticks, heartbeat answers) keeps running."""
    async def scenario() -> None:
        storage = SlowSyncStorage()
        node, _ = single_node(storage, peers=frozenset({0, 1, 2}))
        await node.start()
        for first in (1, 4, 7):
            entries = tuple(Entry(index=i, term=2, data=b"x") for i in range(first, first + 3))
            append = Message(MessageType.APPEND, src=1, dst=0, term=2, log_term=2 if first > 1
                             else 0, index=first - 1, entries=entries, commit=first - 1)
            reply = await asyncio.wait_for(node.handle_request(append), 5)
            assert reply is not None and not reply.reject
            assert storage.durable_last >= reply.index
        await node.stop()
        main = threading.current_thread().name
        assert storage.sync_threads[0] == main
        assert storage.sync_threads[-1] != main, storage.sync_threads

    run(scenario)


def test_a_leader_with_a_slow_disk_syncs_off_its_loop() -> None:
    """The same rule for a leader: its own fsync moves to the worker thread
    after a slow one (it then replicates while syncing), and it still counts
    itself only once durable."""
    storage = SlowSyncStorage()
    run(lambda: propose_on_a_single_node(storage, 5))
    main = threading.current_thread().name
    assert storage.sync_threads[0] == main
    assert storage.sync_threads[-1] != main, storage.sync_threads


class OnceSlowSyncStorage(SlowSyncStorage):
    """Only the first fsync is slow."""

    def sync(self) -> None:
        if self.sync_threads:
            self.sync_threads.append(threading.current_thread().name)
            DeferredSyncStorage.sync(self)
        else:
            super().sync()


@pytest.mark.parametrize("hold", [10.0, 0.0])
def test_after_a_slow_fsync_the_worker_keeps_the_fsyncs_for_a_while(hold: float) -> None:
    storage = OnceSlowSyncStorage()
    run(lambda: propose_on_a_single_node(storage, 6, slow_disk_hold=hold))
    main = threading.current_thread().name
    on_loop = [t == main for t in storage.sync_threads]
    assert on_loop[:2] == [True, False]  # the slow one, then the worker
    if hold:
        assert not any(on_loop[2:]), on_loop  # held off the loop
    else:
        assert all(on_loop[2:]), on_loop  # fast again: back on the loop


class BlockingSnapshotStorage(DeferredSyncStorage):
    """``create_snapshot`` waits for ``release`` (a large snapshot on a slow
    disk) and records the thread it ran on; saves meanwhile are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()
        self.snapshot_threads: list[str] = []
        self.saves_while_snapshotting = 0

    def create_snapshot(self, index: int, data: bytes, membership: Membership) -> Snapshot:
        self.snapshot_threads.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(5)
        return super().create_snapshot(index, data, membership)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None = None, *, sync: bool = True) -> bool:
        if self.started.is_set() and not self.release.is_set():
            self.saves_while_snapshotting += 1
        return super().save(hard_state, entries, snapshot, sync=sync)


def test_snapshots_are_written_off_the_loop_and_hold_writes_meanwhile() -> None:
    """The snapshot's file and the compaction run in the storage worker: the
    loop keeps serving (ticks, RPCs), and no write reaches the storage
    until the worker is done with it."""
    async def scenario() -> None:
        storage = BlockingSnapshotStorage()
        transport = RecordingTransport()
        ticker = ManualTicker()
        node = RaftNode(NodeConfig(id=0, peers=frozenset({0}), seed=1, max_raft_state=64,
                                   snapshot_catchup_entries=0),
                        storage, RecordingStateMachine(), transport, ticker=ticker)
        await node.start()
        await elect(node)
        for i in range(10):  # past max_raft_state: the snapshot starts
            await node.propose(b"entry %d" % i)
            if storage.started.is_set():
                break
        await until(storage.started.is_set)
        # The worker holds the storage; the loop still runs the node.
        ticker.tick(3)
        late = node.propose_future(b"late")
        for _ in range(10):
            await asyncio.sleep(0)  # the drain takes it, holds its write
        assert not late.done(), "committed while the worker had the storage"
        assert storage.saves_while_snapshotting == 0
        storage.release.set()
        index, _ = await asyncio.wait_for(late, 5)
        await until(lambda: node.status().first_index > 1)
        assert storage.durable_last >= index
        main = threading.current_thread().name
        assert storage.snapshot_threads and main not in storage.snapshot_threads
        await node.stop()

    run(scenario)


class SlowCopyStateMachine(RecordingStateMachine):
    """A state machine whose snapshots are files, and whose file takes
    until ``release`` to write (a large store)."""

    def __init__(self, snapshot_dir: str) -> None:
        super().__init__()
        self.snapshot_dir = snapshot_dir
        self.copying = threading.Event()
        self.release = threading.Event()

    def save_snapshot(self, meta: SnapshotMeta) -> int:
        self.copying.set()
        assert self.release.wait(5)
        return 0


def test_a_snapshot_copy_does_not_hold_up_writes(tmp_path: Path) -> None:
    """Writing a store's snapshot file takes as long as the store is large;
    the log's writes go on meanwhile (only recording the snapshot in the
    log, afterwards, has the storage to itself)."""
    async def scenario() -> None:
        fsm = SlowCopyStateMachine(str(tmp_path))
        storage = DeferredSyncStorage()
        node = RaftNode(NodeConfig(id=0, peers=frozenset({0}), seed=1, max_raft_state=64,
                                   snapshot_catchup_entries=0),
                        storage, fsm, RecordingTransport(), ticker=ManualTicker())
        await node.start()
        await elect(node)
        for i in range(10):
            await node.propose(b"entry %d" % i)
        await until(fsm.copying.is_set)
        # The copy runs: proposals still commit, durable first.
        for i in range(5):
            index, _ = await asyncio.wait_for(node.propose(b"during %d" % i), 5)
            assert storage.durable_last >= index
        assert node.status().snapshot_index == 0
        fsm.release.set()
        await until(lambda: node.status().snapshot_index > 0)
        assert node.status().first_index > 1
        await node.stop()

    run(scenario)
