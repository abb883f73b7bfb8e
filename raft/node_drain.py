"""``Drain``: the one task of a ``RaftNode`` that runs its core's Readys.

It is woken whenever the core gets input (``wake``), and everything that
arrived meanwhile goes into the next write, covered by one fsync (group
commit). The ``ReadyProcessor`` keeps ``Ready``'s ordering rule; this class
only decides *where* the I/O runs: the fsync inline or in the
``StorageWorker``, snapshots always in the worker. While the worker has the
storage the drain keeps taking Readys (a leader keeps replicating, everyone
keeps applying) and holds their writes until the worker is done; a
snapshot's copy runs in its own thread and holds nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from raft.node_types import NodeMetrics
from raft.ready_processor import ReadyProcessor
from raft.snapshotter import Snapshotter
from raft.storage import Storage
from raft.storage_worker import StorageWorker

__all__ = ["Drain"]


class Drain:
    def __init__(
        self,
        proc: ReadyProcessor,
        storage: Storage,
        worker: StorageWorker,
        snapshots: Snapshotter,
        metrics: NodeMetrics,
        *,
        before: Callable[[], None],
        applied: Callable[[], int],
        fatal: Callable[[Exception], None],
    ) -> None:
        """``before`` runs before each drain (e.g. start a ReadIndex round
        for the reads that arrived), ``applied`` tells the applied index
        (what a snapshot would hold), ``fatal`` stops the node."""
        self._proc = proc
        self._storage = storage
        self._worker = worker
        self._snapshots = snapshots
        self._metrics = metrics
        self._before = before
        self._applied = applied
        self._fatal = fatal
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: No more drains (the node stopped or failed).
        self.stopped = False

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.wake()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._snapshots.close()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self.stopped:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._before()
                self._drain()
                snapshots = self._snapshots
                if snapshots.copied:
                    if not self._worker.busy:
                        snapshots.commit(self._worker, self._snapshot_done)
                elif snapshots.due(self._applied()):
                    self.snapshot_now()
            except Exception as exc:
                self._fatal(exc)
                return

    def _drain(self) -> None:
        """Take every Ready, write what was taken, and sync: on the loop
        while the disk is fast (then go round again: the sync may have
        released more), else in the worker (``_synced``)."""
        proc = self._proc
        metrics = self._metrics
        worker = self._worker
        snapshots = self._snapshots
        while not self.stopped:
            while (rd := proc.take()) is not None:
                metrics.entries_persisted += len(rd.entries)
                snapshots.written(rd.snapshot, rd.entries)
            if worker.busy or not proc.has_unwritten:
                return
            if proc.write():
                metrics.saves += 1
                if not worker.sync(self._storage.sync, self._worker_done):
                    return
            proc.synced()

    def _worker_done(self, exc: BaseException | None) -> None:
        """The worker's fsync finished (on the loop): carry on the drain."""
        if self.stopped:
            return
        try:
            if exc is not None:
                raise exc
            self._proc.synced()
        except Exception as err:
            self._fatal(err)
            return
        self.wake()

    def snapshot_now(self) -> bool:
        """Snapshot the state machine at the applied index and compact the
        log (off the loop, see ``raft.snapshotter``). False if it cannot
        start now: a write is in flight (the state machine may be ahead of
        the disk), a snapshot is under way, or nothing is new."""
        if self.stopped or self._proc.in_flight:
            return False
        return self._snapshots.start(self._applied(), self._snapshot_done)

    def _snapshot_done(self, exc: BaseException | None) -> None:
        if self.stopped:
            return
        if exc is not None:
            self._fatal(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        else:
            self.wake()  # to commit the copied snapshot, or write what was held
