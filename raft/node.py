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
(group commit). Where the fsync runs (on the loop while the disk is fast,
else in a worker thread) is the ``StorageWorker``'s call; snapshots are
written and the log compacted in that worker too (``Snapshotter``). While
the worker has the storage, the drain keeps taking Readys (their writes
wait): a leader keeps replicating and everyone keeps applying, which is
what ``Ready``'s rule allows.

The node's other concerns live beside it: ticks (``raft.node_ticker``),
proposal, read and peer-reply waiters (``raft.node_waiters``), leadership
transfer (``raft.node_transfer``), snapshots (``raft.snapshotter``), fsync
placement (``raft.storage_worker``) and the network (a ``Transport``).

Requests from peers are answered on the same RPC call: ``handle_request``
gives the request an id (``Message.reply_to``), the core copies it into its
response, and the response, when the processor sends it (after the write it
promises), settles that call. A request the core ignores is answered with
nothing at once (``RaftCore.step`` says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from raft.core import NotLeader, PeerStatus, RaftCore
from raft.membership import ConfChange, Membership
from raft.node_drain import Drain
from raft.node_ticker import LoopTicker, Ticker
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
from raft.ready_processor import ReadyProcessor
from raft.snapshotter import Snapshotter, recover_state_machine
from raft.storage import Storage, StorageError
from raft.storage_worker import StorageWorker
from raft.types import Entry, Message, ReadState, Role, Snapshot, SoftState
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

class RaftNode:
    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        state_machine: StateMachine,
        transport: Transport | None = None,
        *,
        ticker: Ticker | None = None,
        storage_worker: StorageWorker | None = None,
    ) -> None:
        """``ticker`` defaults to a ``LoopTicker`` of ``config.tick_interval``
        and ``storage_worker`` to a ``StorageWorker`` on the real clock
        (tests pass a ``ManualTicker`` and a fake clock)."""
        self.config = config
        self.id = config.id
        self._storage = storage
        self._fsm = state_machine
        self._transport = transport
        self._log = logging.LoggerAdapter(log, {"node_id": config.id})
        applied = recover_state_machine(storage, state_machine, config.bootstrap_membership(),
                                        self._log)
        self._applied = applied
        self._core = RaftCore(config.core_config(applied), storage)
        self._proc = ReadyProcessor(self._core, storage, self)
        self._role = Role.FOLLOWER
        #: Peer requests waiting for the core's response, by reply id.
        self._replies = PeerReplies()
        self._proposals = Proposals()
        self._reads = Reads()
        #: Callers of transfer_leadership waiting for another node to lead:
        #: (target, future of the new leader's id).
        self._transfers = TransferWaiters()
        self._worker = storage_worker or StorageWorker(f"raft{config.id}-storage")
        self._ticker = ticker or LoopTicker(config.tick_interval)
        self._stopped = False  # no more input is taken
        self._closed = False  # stop() has run
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()
        self.metrics = NodeMetrics()
        self._snapshots = Snapshotter(config, storage, state_machine, self.metrics, self._log,
                                      membership_at=self._core.membership_at)
        #: Called with each new membership in force (see ``add_membership_listener``).
        self._membership_listeners: list[Callable[[Membership], None]] = []
        self._drain = Drain(self._proc, storage, self._worker, self._snapshots, self.metrics,
                            before=lambda: self._reads.start_round(self._core),
                            applied=lambda: self._applied, fatal=self._fatal)

    # -- lifecycle -------------------------------------------------------------

    def set_transport(self, transport: Transport) -> None:
        self._transport = transport

    async def start(self) -> None:
        if self._transport is None:
            raise RuntimeError("RaftNode.start() needs a transport")
        self._log.info("node %d starting: term %d, applied %d, last index %d",
                       self.id, self._core.term, self._applied, self._core.log.last_index())
        self._drain.start()
        self._ticker.start(self._on_tick)

    async def stop(self) -> None:
        """Stop ticking, fail everything pending, close the transport and
        storage. Also needed after the node stopped itself on a failure."""
        if self._closed:
            return
        self._closed = True
        self._stopped = True
        self._ticker.stop()
        await self._drain.stop()
        # A job still running in the worker finishes before the files close.
        self._worker.shutdown()
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
        self._drain.wake()

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
        self._drain.wake()
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
        self._drain.wake()
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
        self._drain.wake()
        return future

    async def change_membership(self, change: ConfChange) -> Membership:
        """Propose one membership change (``RaftCore.propose_conf_change``)
        and return the membership it made once committed and applied here.
        Raises ``NotLeader``, ``ProposalDropped``, ``ConfChangeRefused``,
        ``ConfChangeError``, ``LeadershipLost`` or ``NodeStopped``."""
        self._check_running()
        index = self._core.propose_conf_change(change)
        membership = self._core.membership
        future = self._proposals.add(index, self._core.term)
        self._drain.wake()
        await future
        return membership

    @property
    def membership(self) -> Membership:
        """The membership in force here (the latest in the log, even uncommitted)."""
        return self._core.membership

    @property
    def membership_index(self) -> int:
        return self._core.membership_index

    def configurations(self) -> list[tuple[int, Membership]]:
        """``RaftCore.configurations``: (index, membership), oldest first."""
        return self._core.configurations()

    def member_progress(self) -> dict[int, PeerStatus]:
        """On the leader, what it knows of each member (match index, state,
        learner or not); empty elsewhere."""
        return self._core.status().progress

    def add_membership_listener(self, listener: Callable[[Membership], None]) -> None:
        """Call ``listener`` with every new membership in force, before any
        message goes to a member it adds (the transport learns addresses
        this way)."""
        self._membership_listeners.append(listener)

    def transfer_leader(self, to: int) -> None:
        self._check_running()
        self._core.transfer_leader(to)
        self._drain.wake()

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
        if timeout is None:
            timeout = 2 * self.election_timeout
        return await self._transfers.transfer(self._core, to, timeout, self._drain.wake,
                                              self._log)

    def report_snapshot_failed(self, peer: int) -> None:
        """Sending ``peer`` a snapshot failed (``RaftCore.report_snapshot_failed``)."""
        if self._stopped:
            return
        self._core.report_snapshot_failed(peer)
        self._drain.wake()

    def report_unreachable(self, peer: int) -> None:
        """The transport could not reach ``peer``: stop streaming to it."""
        if self._stopped:
            return
        self._core.report_unreachable(peer)
        self._transfers.unreachable(peer)
        self._drain.wake()

    def campaign(self) -> None:
        self._check_running()
        self._core.campaign()
        self._drain.wake()

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
            snapshot_index=self._snapshots.index,
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

    # -- ticks and failures ------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopped:
            raise NodeStopped(f"node {self.id} is stopped")

    def _on_tick(self) -> None:
        if self._stopped:
            return
        self._core.tick()
        self._transfers.settle(self._core)
        self._drain.wake()

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
        self._drain.stopped = True
        self._ticker.stop()
        self._fail_pending(NodeStopped(f"node {self.id} failed: {exc}"))

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

    def membership_changed(self, membership: Membership) -> None:
        self._log.info("node %d: membership now %s", self.id, membership.describe())
        for listener in self._membership_listeners:
            listener(membership)

    def apply(self, entries: tuple[Entry, ...]) -> None:
        results = self._fsm.apply(entries)
        self._applied = entries[-1].index
        self.metrics.entries_applied += len(entries)
        applied = self._proposals.applied
        for entry, result in zip(entries, results, strict=True):
            applied(entry, result)
        self._reads.release(self._applied)

    def read_ready(self, read: ReadState) -> None:
        self._reads.confirmed(read, self._applied)

    def role_changed(self, soft: SoftState) -> None:
        self._on_soft_state(soft.role, soft.leader)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        self._fsm.restore(snapshot.data, snapshot.meta)
        self._applied = snapshot.meta.index
        self._snapshots.installed(snapshot)
        self._proposals.overtaken(snapshot.meta.index)
        self._log.info("node %d installed snapshot at index %d term %d",
                       self.id, snapshot.meta.index, snapshot.meta.term)

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

    def snapshot_now(self) -> bool:
        """See ``raft.node_drain.Drain.snapshot_now``."""
        return self._drain.snapshot_now()
