"""``Snapshotter``: when a node snapshots its state machine, and the writing
of that snapshot and the log compaction after it, off the event loop.

The trigger is ``--max-raft-state`` (the seed's maxraftstate): bytes of log
entries written since the last snapshot (``RaftStateSize``). A snapshot is
taken only while no write is in flight (every taken Ready is durable): the
state machine may otherwise be built from a snapshot the disk does not hold
yet (``Ready`` rule 4 restores it before the write). Three steps:

1. on the loop, at one applied index: the state machine's snapshot bytes
   (for a state kept in a file, a marker);
2. in the snapshot thread, while the node goes on writing: the state machine
   made durable through that index (synced, or its file copied: as large as
   the state, so it must not hold up the log's writes);
3. in the ``StorageWorker``, which has the storage to itself meanwhile
   (briefly): the snapshot recorded in the log (its file, a WAL record) and
   the log before it compacted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from raft.membership import Membership
from raft.node_types import NodeConfig, NodeMetrics, StateMachine
from raft.raft_state_size import RaftStateSize
from raft.snapshot_stream import FileSnapshots
from raft.storage import Storage
from raft.storage_worker import StorageWorker
from raft.types import Entry, EntryType, Snapshot, SnapshotMeta

__all__ = ["Snapshotter", "membership_in_storage", "recover_state_machine"]


def membership_in_storage(storage: Storage, index: int, bootstrap: Membership) -> Membership:
    """The membership as of ``index`` by what ``storage`` holds: the latest
    configuration entry at or before it, else the snapshot's, else
    ``bootstrap`` (what ``RaftCore`` itself would use)."""
    last = min(index, storage.last_index())
    lo = storage.first_index()
    while last >= lo:
        first = max(lo, last - 4095)
        for e in reversed(storage.entries(first, last + 1)):
            if e.type is EntryType.CONF_CHANGE:
                return Membership.decode(e.data)
        last = first - 1
    snap = storage.snapshot().meta.membership
    return snap if not snap.empty else bootstrap


def recover_state_machine(storage: Storage, state_machine: StateMachine,
                          bootstrap: Membership,
                          log: logging.LoggerAdapter[logging.Logger]) -> int:
    """At start, bring the state machine and the log into agreement; return
    the applied index.

    A state machine behind the log's snapshot (one kept in memory, or one
    on disk that was lost) is restored from it. One ahead of the log (it
    applied committed entries before this node's write of them was durable,
    or a leader's snapshot was swapped in, and the node stopped before its
    log recorded them) makes the log restart after what it holds, as after
    installing a snapshot: those entries are committed, on a quorum's
    disks, so nothing is lost by not holding them in this log. A state
    machine whose snapshots are files first writes that snapshot's file
    (the log's snapshot must always have one). Entries after it are
    replayed."""
    snapshot = storage.snapshot()
    if not snapshot.empty and state_machine.applied_index < snapshot.meta.index:
        state_machine.restore(snapshot.data, snapshot.meta)
    applied, term = state_machine.applied_index, state_machine.applied_term
    if applied > storage.last_index() or (applied > 0 and storage.term(applied) != term):
        log.warning("state machine holds entries through %d (term %d), the log only through "
                    "%d: the log restarts after them", applied, term, storage.last_index())
        membership = state_machine.applied_membership or membership_in_storage(
            storage, applied, bootstrap)
        meta = SnapshotMeta(index=applied, term=term, membership=membership)
        if isinstance(state_machine, FileSnapshots):
            state_machine.save_snapshot(meta)
        storage.save(None, (), Snapshot(meta=meta, data=state_machine.snapshot()))
        storage.sync()
    return applied


class Snapshotter:
    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        state_machine: StateMachine,
        metrics: NodeMetrics,
        log: logging.LoggerAdapter[logging.Logger],
        *,
        membership_at: Callable[[int], Membership],
    ) -> None:
        self._config = config
        self._membership_at = membership_at
        self._storage = storage
        self._fsm = state_machine
        self._metrics = metrics
        self._log = log
        #: The index of the newest snapshot (taken here or installed).
        self.index = storage.snapshot().meta.index
        #: A snapshot is under way (being copied, or recorded by the worker).
        self.writing = False
        #: Copied, waiting for ``commit``: (meta, the Raft snapshot's data).
        self._copied: tuple[SnapshotMeta, bytes] | None = None
        self._copier = ThreadPoolExecutor(max_workers=1,
                                          thread_name_prefix=f"raft{config.id}-snapshot")
        # What --max-raft-state bounds (None: not tracked).
        self._size: RaftStateSize | None = None
        if config.max_raft_state is not None:
            last = storage.last_index()
            first = max(storage.first_index(), self.index + 1)
            self._size = RaftStateSize(
                storage.entries(first, last + 1) if last >= first else ())

    def written(self, snapshot: Snapshot | None, entries: tuple[Entry, ...]) -> None:
        """A Ready with these parts was taken (its writes are coming)."""
        size = self._size
        if size is None:
            return
        if snapshot is not None and not snapshot.empty:
            size.snapshotted(snapshot.meta.index)
        for entry in entries:
            size.written(entry)

    def installed(self, snapshot: Snapshot) -> None:
        """The state machine was replaced by a leader's ``snapshot``."""
        self.index = snapshot.meta.index
        self._metrics.snapshots_installed += 1

    def due(self, applied: int) -> bool:
        """The raft state passed ``max_raft_state`` and there is something
        new to snapshot."""
        limit = self._config.max_raft_state
        return (limit is not None and self._size is not None
                and self._size.bytes >= limit and applied > self.index)

    def start(self, applied: int, on_copied: Callable[[BaseException | None], None]) -> bool:
        """Snapshot the state machine at ``applied``: its bytes now (on the
        loop), then, in the snapshot thread, make it durable (synced, or its
        file written: a copy of a large store takes a while, and the node
        keeps writing meanwhile). ``on_copied`` runs on the loop when that is
        done (with the exception it raised, if any); then ``commit``. The
        caller guarantees that no write is in flight. False if there is
        nothing to snapshot (``applied`` not newer, or not yet in storage)."""
        storage = self._storage
        if self.writing or applied <= self.index or applied > storage.last_index():
            return False
        data = self._fsm.snapshot()  # at ``applied``, on the loop
        meta = SnapshotMeta(index=applied, term=storage.term(applied),
                            membership=self._membership_at(applied))
        self.writing = True
        fsm = self._fsm

        def copy() -> None:
            # The state machine durable through ``applied`` before the log
            # forgets it: synced, or (state kept in a file) copied to the
            # snapshot's file.
            if isinstance(fsm, FileSnapshots):
                fsm.save_snapshot(meta)
            else:
                fsm.sync()

        def copied(fut: asyncio.Future[None]) -> None:
            exc = None if fut.cancelled() else fut.exception()
            if exc is not None:
                self.writing = False
            else:
                self._copied = (meta, data)
            on_copied(exc)

        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._copier, copy).add_done_callback(copied)
        return True

    @property
    def copied(self) -> bool:
        """A snapshot is durable in the state machine, not yet in the log."""
        return self._copied is not None

    def commit(self, worker: StorageWorker,
               on_done: Callable[[BaseException | None], None]) -> None:
        """Record the copied snapshot in storage and compact the log, in
        ``worker`` (the caller guarantees it is idle: storage is the
        worker's meanwhile, briefly); ``on_done`` runs on the loop after."""
        assert self._copied is not None
        (meta, data), self._copied = self._copied, None
        storage = self._storage
        compact_to = meta.index - self._config.snapshot_catchup_entries

        def job() -> None:
            storage.create_snapshot(meta.index, data, meta.membership)
            if compact_to >= storage.first_index():
                storage.compact(compact_to)

        def done(exc: BaseException | None) -> None:
            self.writing = False
            if exc is not None:
                on_done(exc)
                return
            self.index = max(self.index, meta.index)
            self._metrics.snapshots_taken += 1
            if self._size is not None:
                self._size.snapshotted(meta.index)
            self._log.info("node %d snapshot at index %d (%d bytes), log from %d",
                           self._config.id, meta.index, len(data), storage.first_index())
            on_done(None)

        worker.run(job, done)

    def close(self) -> None:
        """Wait for a copy in progress (its file must not close under it)."""
        self._copier.shutdown(wait=True)
