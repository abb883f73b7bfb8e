"""``RaftNode``: the asyncio driver of one ``RaftCore``.

The only asyncio code in ``raft/``. It keeps time (a tick every
``tick_interval`` seconds), feeds the core what arrives (peer messages,
proposals, reads), and runs the core's Readys through the shared
``ReadyProcessor``, which keeps the one ordering rule ``raft.core.Ready``
states: messages that promise nothing leave at once, committed entries are
applied at once, the writes go to storage in order, and acknowledgements
and vote grants leave only once the writes are durable.

One task drains; it is woken whenever the core gets input, and everything
that arrived meanwhile goes into the next write, covered by one fsync
(group commit). The fsync runs on the loop while the disk is fast: a
thread handoff per write cost more than it saved. After a slow fsync the
next ones run in a worker thread, for at least ``_SLOW_DISK_HOLD`` seconds
and until one is fast again, so a slow disk stalls only the writes, not the
node's RPCs, ticks and heartbeats. Meanwhile the drain keeps taking Readys
(their writes wait for the fsync): a leader keeps replicating and everyone
keeps applying, which is what ``Ready``'s rule allows.

Requests from peers are answered on the same RPC call: ``handle_request``
gives the request an id (``Message.reply_to``), the core copies it into its
response, and the response, when the processor sends it (after the write it
promises), settles that call. A request the core ignores is answered with
nothing at once (``RaftCore.step`` says so).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from random import Random
from typing import Any

from raft.core import Config, NotLeader, RaftCore
from raft.node_transfer import TransferWaiters, best_transfer_target
from raft.node_types import (
    LeadershipLost,
    NodeConfig,
    NodeMetrics,
    NodeStatus,
    NodeStopped,
    StateMachine,
    Transport,
)
from raft.node_waiters import PeerReplies, Proposals, Reads
from raft.raft_state_size import RaftStateSize
from raft.ready_processor import ReadyProcessor
from raft.storage import Storage, StorageError
from raft.types import NONE, Entry, EntryType, Message, ReadState, Role, Snapshot, SoftState
from rpc import Promise

__all__ = [
    "LeadershipLost",
    "NodeConfig",
    "NodeMetrics",
    "NodeStatus",
    "NodeStopped",
    "RaftNode",
    "StateMachine",
    "Transport",
]

log = logging.getLogger("raft.node")

#: A node fsyncs on its event loop while its fsyncs take less than this
#: (seconds); after a slower one, in the worker thread for at least
#: ``_SLOW_DISK_HOLD`` seconds: a disk that stalls once tends to stall
#: again, and an fsync on the loop stalls the whole node (a leader's
#: heartbeats too, as in etcd, whose Ready loop waits for its WAL fsync).
_INLINE_SYNC_LIMIT = 0.005
_SLOW_DISK_HOLD = 10.0

class RaftNode:
    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        state_machine: StateMachine,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self._storage = storage
        self._fsm = state_machine
        self._transport = transport
        self._log = logging.LoggerAdapter(log, {"node_id": config.id})
        snapshot = storage.snapshot()
        applied = 0
        if not snapshot.empty:
            state_machine.restore(snapshot.data)
            applied = snapshot.meta.index
        self._applied = applied
        self._snapshot_index = snapshot.meta.index
        self._core = RaftCore(
            Config(
                id=config.id,
                peers=config.peers,
                rng=Random(config.seed),
                election_tick=config.election_tick,
                election_jitter=config.election_jitter,
                heartbeat_tick=config.heartbeat_tick,
                pre_vote=config.pre_vote,
                check_quorum=config.check_quorum,
                broadcast_commit=config.broadcast_commit,
                max_size_per_msg=config.max_size_per_msg,
                max_inflight_msgs=config.max_inflight_msgs,
                applied=applied,
            ),
            storage,
        )
        self._proc = ReadyProcessor(self._core, storage, self)
        # What --max-raft-state bounds (None: not tracked).
        self._state_size: RaftStateSize | None = None
        if config.max_raft_state is not None:
            last = storage.last_index()
            first = max(storage.first_index(), self._snapshot_index + 1)
            self._state_size = RaftStateSize(
                storage.entries(first, last + 1) if last >= first else ())
        self._role = Role.FOLLOWER
        #: Peer requests waiting for the core's response, by reply id.
        self._replies = PeerReplies()
        self._proposals = Proposals()
        self._reads = Reads()
        #: Callers of transfer_leadership waiting for another node to lead:
        #: (target, future of the new leader's id).
        self._transfers = TransferWaiters()
        self._wake: asyncio.Event | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft{config.id}-fsync")
        #: The next fsync runs on the loop (see _drain and _sync).
        self._sync_inline = True
        self._inline_again_at = 0.0  # (time.monotonic)
        #: An fsync is running in the worker thread.
        self._syncing = False
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False  # no more input is taken
        self._closed = False  # stop() has run
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()
        self.metrics = NodeMetrics()

    # -- lifecycle -------------------------------------------------------------

    def set_transport(self, transport: Transport) -> None:
        self._transport = transport

    async def start(self) -> None:
        if self._transport is None:
            raise RuntimeError("RaftNode.start() needs a transport")
        self._loop = asyncio.get_running_loop()
        self._log.info("node %d starting: term %d, applied %d, last index %d",
                       self.id, self._core.term, self._applied, self._core.log.last_index())
        self._wake = asyncio.Event()
        self._drain_task = self._loop.create_task(self._drain_loop())
        self._schedule_tick(self._loop.time())
        self._schedule_drain()

    async def stop(self) -> None:
        """Stop ticking, fail everything pending, close the transport and
        storage. Also needed after the node stopped itself on a failure."""
        if self._closed:
            return
        self._closed = True
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._drain_task is not None:
            self._drain_task.cancel()
            await asyncio.gather(self._drain_task, return_exceptions=True)
        # An fsync still running in the worker finishes before the file closes.
        self._io.shutdown(wait=True)
        self._fail_pending(NodeStopped(f"node {self.id} stopped"))
        if self._transport is not None:
            await self._transport.close()
        self._storage.close()
        self._log.info("node %d stopped", self.id)

    @property
    def failure(self) -> BaseException | None:
        """Set when the node stopped itself because storage failed."""
        return self._failure

    async def wait_failed(self) -> BaseException:
        """Return once the node has stopped itself on a fatal error."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    # -- inputs ------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """A message from a peer that needs no reply on the same call
        (responses to our requests)."""
        if self._stopped:
            return
        self._core.step(msg)
        self._schedule_drain()

    def handle_request(self, msg: Message) -> Promise[Message | None]:
        """A request from a peer; the future of the core's response to it,
        resolved only after what it depends on is durable (None if the core
        ignored it). A plain future, no coroutine: the replication path."""
        future: Promise[Message | None] = Promise()
        if self._stopped:
            future.set_result(None)
            return future
        reply_id, future = self._replies.add()
        if not self._core.step(replace(msg, reply_to=reply_id)):
            # Ignored (a stale term, a vote inside the leader lease): no
            # response will come.
            self._replies.unanswered(reply_id)
        self._schedule_drain()
        return future

    async def propose(self, data: bytes) -> tuple[int, Any]:
        """Replicate ``data``; returns (index, state machine result) once the
        entry is committed and applied here. Raises ``NotLeader`` (with a
        hint), ``ProposalDropped``, ``LeadershipLost`` or ``NodeStopped``."""
        return await self.propose_future(data)

    def propose_future(self, data: bytes) -> Promise[tuple[int, Any]]:
        """``propose`` as a plain future (no coroutine, no Task): what a hot
        path awaits. ``NotLeader``/``ProposalDropped`` raise at once. A caller
        may resolve the future itself (e.g. with a timeout); the node then
        ignores it."""
        return self.propose_futures((data,))[0]

    def propose_futures(
        self, datas: Sequence[bytes]
    ) -> list[Promise[tuple[int, Any]]]:
        """Propose several entries at once (consecutive indexes), one future
        each, as ``propose_future``. All or none are proposed: the checks
        that raise cannot change in between. The futures settle in index
        order, so once the last is done all are, unless a caller resolved
        some of them itself."""
        self._check_running()
        core = self._core
        propose = core.propose
        term = core.term
        add = self._proposals.add
        futures = [add(propose(data), term) for data in datas]
        self._schedule_drain()
        return futures

    async def read_index(self) -> int:
        """Wait until a linearizable read may be served from the local state
        machine (ReadIndex, dissertation 6.4); returns the read index. Raises
        ``NotLeader`` or ``NodeStopped``; a caller should bound it with a
        timeout (a partitioned leader never gets its quorum round)."""
        return await self.read_index_future()

    def read_index_future(self) -> Promise[int]:
        """``read_index`` as a plain future; see ``propose_future``."""
        self._check_running()
        if self._core.role is not Role.LEADER:
            raise NotLeader(self._core.leader)
        future = self._reads.add()  # batched: one quorum round for many
        self._schedule_drain()
        return future

    def transfer_leader(self, to: int) -> None:
        self._check_running()
        self._core.transfer_leader(to)
        self._schedule_drain()

    @property
    def election_timeout(self) -> float:
        """The longest randomized election timeout, in seconds."""
        cfg = self.config
        return (cfg.election_tick + (cfg.election_jitter or cfg.election_tick)) \
            * cfg.tick_interval

    def best_transfer_target(self) -> int:
        """See ``raft.node_transfer.best_transfer_target``."""
        return best_transfer_target(self._core)

    async def transfer_leadership(self, to: int | None = None,
                                  timeout: float | None = None) -> int:
        """Hand leadership to ``to`` (default: ``best_transfer_target()``)
        and return the new leader's id once this node has heard from it (it
        leads a later term). Raises ``NotLeader`` (with a hint) if this node
        does not lead, ``ValueError`` for a target that is not another
        voter, ``TimeoutError`` if the transfer did not finish: the core
        aborts it after an election timeout (dissertation 3.10), and
        ``timeout`` (default twice the longest election timeout) bounds the
        wait; or ``NodeStopped``. Proposals are refused meanwhile."""
        self._check_running()
        core = self._core
        if core.role is not Role.LEADER:
            raise NotLeader(core.leader)
        if to is None:
            to = self.best_transfer_target()
            if to == NONE:
                raise ValueError("no other voter to transfer leadership to")
        if to == self.id:
            return self.id
        if to not in core.peers:
            raise ValueError(f"node {to} is not a voter")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._transfers.add(to, future)
        self._log.info("node %d transferring leadership to node %d (term %d, its match %d "
                       "of %d)", self.id, to, core.term, core.progress[to].match,
                       core.log.last_index())
        core.transfer_leader(to)
        self._schedule_drain()
        if timeout is None:
            timeout = 2 * self.election_timeout
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"leadership transfer to node {to} did not finish "
                               f"within {timeout:g} s") from None
        finally:
            self._transfers.discard(future)

    def report_unreachable(self, peer: int) -> None:
        """The transport could not reach ``peer``: stop streaming to it."""
        if self._stopped:
            return
        self._core.report_unreachable(peer)
        self._transfers.unreachable(peer)
        self._schedule_drain()

    def campaign(self) -> None:
        self._check_running()
        self._core.campaign()
        self._schedule_drain()

    def status(self) -> NodeStatus:
        core = self._core
        return NodeStatus(
            id=self.id,
            role=core.role,
            term=core.term,
            leader=core.leader,
            commit=core.log.committed,
            applied=self._applied,
            last_index=core.log.last_index(),
            first_index=self._storage.first_index(),
            snapshot_index=self._snapshot_index,
        )

    @property
    def is_leader(self) -> bool:
        return self._core.role is Role.LEADER

    @property
    def leader(self) -> int:
        return self._core.leader

    @property
    def term(self) -> int:
        return self._core.term

    # -- the drain ---------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopped:
            raise NodeStopped(f"node {self.id} is stopped")

    def _schedule_tick(self, when: float) -> None:
        assert self._loop is not None
        self._ticker = self._loop.call_at(when, self._on_tick, when)

    def _on_tick(self, scheduled: float) -> None:
        if self._stopped:
            return
        self._core.tick()
        self._transfers.settle(self._core)
        self._schedule_drain()
        assert self._loop is not None
        # Keep a steady cadence; if the loop fell behind, skip ahead rather
        # than firing a burst of ticks (which would expire election timers).
        nxt = scheduled + self.config.tick_interval
        now = self._loop.time()
        if nxt < now:
            nxt = now + self.config.tick_interval
        self._schedule_tick(nxt)

    def _schedule_drain(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _drain_loop(self) -> None:
        assert self._wake is not None
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._reads.start_round(self._core)
                self._drain()
                self._maybe_snapshot()
            except Exception as exc:
                self._fatal(exc)
                return

    def _drain(self) -> None:
        """Take every Ready, write what was taken, and sync: on the loop
        while the disk is fast (then go round again: the sync may have
        released more), else in the worker thread (``_synced``)."""
        proc = self._proc
        metrics = self.metrics
        while not self._stopped:
            while (rd := proc.take()) is not None:
                metrics.entries_persisted += len(rd.entries)
                size = self._state_size
                if size is not None:
                    if rd.snapshot is not None and not rd.snapshot.empty:
                        size.snapshotted(rd.snapshot.meta.index)
                    for entry in rd.entries:
                        size.written(entry)
            if self._syncing or not proc.has_unwritten:
                return
            if proc.write():
                metrics.saves += 1
                if not self._sync_inline:
                    self._syncing = True
                    assert self._loop is not None
                    self._loop.run_in_executor(self._io, self._sync).add_done_callback(
                        self._synced)
                    return
                self._sync()
            proc.synced()

    def _synced(self, done: asyncio.Future[None]) -> None:
        """The worker's fsync finished (on the loop): carry on the drain."""
        self._syncing = False
        if self._stopped:
            return
        exc = None if done.cancelled() else done.exception()
        try:
            if exc is not None:
                raise exc
            self._proc.synced()
        except Exception as err:
            self._fatal(err)
            return
        self._schedule_drain()

    def _fatal(self, exc: Exception) -> None:
        # Storage failures (full disk, failed fsync) leave the on-disk state
        # unknown: stop rather than continue (fail-stop).
        # A storage failure is the disk's doing: one line says it all. Anything
        # else is a bug, and its traceback is what a report needs.
        self._log.critical("node %d: fatal error, stopping: %s", self.id, exc,
                           exc_info=not isinstance(exc, (StorageError, OSError)))
        self._failure = exc
        self._failed.set()
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
        self._fail_pending(NodeStopped(f"node {self.id} failed: {exc}"))

    def _sync(self) -> None:
        """``Storage.sync``, timed: decides where the next one runs."""
        start = time.monotonic()
        self._storage.sync()
        end = time.monotonic()
        fast = end - start < _INLINE_SYNC_LIMIT
        if not fast:
            self._inline_again_at = end + _SLOW_DISK_HOLD
        self._sync_inline = fast and end >= self._inline_again_at

    # -- ReadyHooks: what the processor does with a Ready's parts ---------------

    def send(self, msg: Message) -> None:
        if msg.reply_to:
            if not self._replies.answer(msg):  # (answers the peer's call right here)
                # The call ended (its deadline, a lost connection): Raft
                # tolerates the lost answer, the peer will ask again.
                self._log.debug("node %d: answer to %d dropped, its call ended: %s",
                                self.id, msg.dst, msg.type.name)
            return
        assert self._transport is not None
        self._transport.send(msg)
        self.metrics.messages_sent += 1

    def flush(self) -> None:
        assert self._transport is not None
        self._transport.flush()

    def restore(self, snapshot: Snapshot) -> None:
        self._install_snapshot(snapshot)

    def apply(self, entry: Entry) -> None:
        self._apply(entry)
        self._reads.release(self._applied)

    def read_ready(self, read: ReadState) -> None:
        self._reads.confirmed(read, self._applied)

    def role_changed(self, soft: SoftState) -> None:
        self._on_soft_state(soft.role, soft.leader)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        self._fsm.restore(snapshot.data)
        self._applied = snapshot.meta.index
        self._snapshot_index = snapshot.meta.index
        self.metrics.snapshots_installed += 1
        self._proposals.overtaken(snapshot.meta.index)
        self._log.info("node %d installed snapshot at index %d term %d",
                       self.id, snapshot.meta.index, snapshot.meta.term)

    def _apply(self, entry: Entry) -> None:
        result: Any = None
        if entry.type is EntryType.NORMAL:
            result = self._fsm.apply(entry.index, entry.data)
        self._applied = entry.index
        self.metrics.entries_applied += 1
        self._proposals.applied(entry, result)

    def _on_soft_state(self, role: Role, leader: int) -> None:
        old, self._role = self._role, role
        self._transfers.settle(self._core)
        if old is Role.LEADER and role is not Role.LEADER:
            self._log.info("node %d stepped down (term %d, leader now %d)",
                           self.id, self._core.term, leader)
            self._fail_leader_work(leader)
        elif role is Role.LEADER and old is not Role.LEADER:
            self._log.info("node %d became leader in term %d", self.id, self._core.term)

    def _fail_leader_work(self, leader: int) -> None:
        self._proposals.fail_all(
            LeadershipLost(f"node {self.id} lost leadership; outcome unknown"))
        self._reads.fail_unconfirmed(NotLeader(leader))

    def _fail_pending(self, exc: Exception) -> None:
        self._proposals.fail_all(exc)
        self._transfers.fail_all(exc)
        self._reads.fail_all(exc)
        self._replies.release_all()

    # -- snapshots ---------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        limit = self.config.max_raft_state
        if limit is None or self._state_size is None or self._state_size.bytes < limit:
            return
        if self._applied <= self._snapshot_index:
            return
        self.snapshot_now()

    def snapshot_now(self) -> None:
        """Snapshot the state machine at the applied index and compact the
        log. Skipped while any write is in flight (taken, not yet durable):
        the state machine may then be ahead of the disk, or built from a
        snapshot or entries the disk does not hold yet (Ready rule 4 applies
        before the write); and while an fsync runs in the worker, storage is
        the worker's."""
        index = self._applied
        if (self._syncing or self._proc.in_flight or index <= self._snapshot_index
                or index > self._storage.last_index()):
            return
        data = self._fsm.snapshot()
        self._storage.create_snapshot(index, data, self.config.peers)
        self._snapshot_index = index
        self.metrics.snapshots_taken += 1
        if self._state_size is not None:
            self._state_size.snapshotted(index)
        compact_to = index - self.config.snapshot_catchup_entries
        if compact_to >= self._storage.first_index():
            self._storage.compact(compact_to)
        self._log.info("node %d snapshot at index %d (%d bytes), log from %d",
                       self.id, index, len(data), self._storage.first_index())
