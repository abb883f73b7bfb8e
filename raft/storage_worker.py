"""``StorageWorker``: where a node's fsyncs and snapshot writes run.

A node fsyncs on its event loop while its fsyncs are fast: a thread handoff
per write cost more than it saved. After a slow fsync (``inline_limit``) the
next ones run in the worker thread, for at least ``slow_disk_hold`` seconds
and until one is fast again: a disk that stalls once tends to stall again,
and an fsync on the loop stalls the whole node (a leader's heartbeats too,
as in etcd, whose Ready loop waits for its WAL fsync). Snapshot writes and
log compaction, which are several fsyncs and a file as large as the state
machine, always run in the worker.

While a job runs in the worker, storage is the worker's: the driver takes
Readys (reads of the stored log stay safe: the storage swaps its entry list
whole, see ``raft.storage.StoredLog``) but writes nothing until the job's
``done`` callback has run on the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["StorageWorker"]

#: Seconds: an fsync at least this slow moves the next ones off the loop.
INLINE_SYNC_LIMIT = 0.005
#: Seconds the fsyncs stay off the loop after a slow one.
SLOW_DISK_HOLD = 10.0


class StorageWorker:
    """Runs storage jobs inline or in one worker thread (see module doc).

    ``clock`` (seconds, monotonic) is injectable so tests can make a disk
    "slow" without waiting for it."""

    def __init__(
        self,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        inline_limit: float = INLINE_SYNC_LIMIT,
        slow_disk_hold: float = SLOW_DISK_HOLD,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._clock = clock
        self._inline_limit = inline_limit
        self._slow_disk_hold = slow_disk_hold
        #: The next fsync runs on the loop.
        self.sync_inline = True
        self._inline_again_at = 0.0
        #: A job runs in the worker thread: storage is not the loop's.
        self.busy = False

    def sync(self, sync: Callable[[], None],
             done: Callable[[BaseException | None], None]) -> bool:
        """Run ``sync`` (a storage's fsync), inline while the disk is fast
        (returns True: it is done, and ``done`` is not called) or in the
        worker (returns False; ``done`` runs on the loop afterwards, with
        the exception the sync raised, if any). An inline sync raises."""
        if self.sync_inline:
            self._timed(sync)
            return True
        self.run(lambda: self._timed(sync), done)
        return False

    def run(self, job: Callable[[], None],
            done: Callable[[BaseException | None], None]) -> None:
        """Run ``job`` in the worker thread; then ``done`` on the loop."""
        if self.busy:
            raise RuntimeError("storage job started while another runs")
        self.busy = True

        def finished(fut: asyncio.Future[None]) -> None:
            self.busy = False
            done(None if fut.cancelled() else fut.exception())

        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._executor, job).add_done_callback(finished)

    def _timed(self, sync: Callable[[], None]) -> None:
        start = self._clock()
        sync()
        end = self._clock()
        fast = end - start < self._inline_limit
        if not fast:
            self._inline_again_at = end + self._slow_disk_hold
        self.sync_inline = fast and end >= self._inline_again_at

    def shutdown(self) -> None:
        """Wait for a running job (a file must not close under it)."""
        self._executor.shutdown(wait=True)
