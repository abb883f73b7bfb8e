"""``FileStorage``: the durable ``Storage``, a WAL plus a snapshot store.

Data directory layout::

    <dir>/LOCK          flock'ed while open: one process per directory
    <dir>/MANIFEST      what wal/ must hold: the newest segment and how many of
                        its bytes are durable, the sizes of the older ones
                        (format: raft/manifest.py); MANIFEST.tmp while replaced
    <dir>/wal/*.wal     the segmented write-ahead log (format: raft/wal.py)
    <dir>/snap/*.snap   snapshot files (format: raft/snapshot_store.py)

Durable state cannot silently shrink. The WAL detects damage inside its
files; ``MANIFEST`` lets open detect what is simply gone, and refuse with a
one-line ``MissingDurableStateError``: a missing newest segment, a missing
``wal/`` (also without a manifest, when ``LOCK`` or ``snap/`` show the dir
was used), an older segment of another size than when it was sealed, a
newest segment shorter than its recorded durable floor. A fresh directory
opens empty; one written before manifests opens as before and gets one.
The manifest is rewritten (two fsyncs) only at open, at segment rotation,
after a snapshot or a compaction and at a clean close, never per ``save``,
so its floor lags the log: a loss of what was synced since then is
indistinguishable from a torn write and is repaired as one.

Semantics are exactly ``MemoryStorage``'s (same results, same exceptions; a
contract suite runs against both), with "handed to save" replaced by "on
disk": when a write method returns, its effect survives any crash, and a
write interrupted by a crash is all-or-nothing after restart.

Everything readable (entries, hard state, current snapshot) is also held in
memory, so reads never touch the disk; the log is bounded by compaction and
the snapshot is the application state, which the node holds in memory anyway.

Threads: one writer at a time. ``sync``, ``create_snapshot`` and ``compact``
may run in the node's storage worker while its loop reads (and writes
nothing); reads stay consistent because those replace the in-memory entry
list and the current snapshot whole, and a read takes each once.

Durability, per method:

* ``save(hs, entries, snapshot)``: an installed snapshot is first written as a
  file (temp, fsync, rename, fsync dir); then one WAL batch — ``SNAPSHOT``
  reset record, ``ENTRY`` records, ``HARD_STATE`` — goes out in one write
  and, with ``sync=True``, one fdatasync; with ``sync=False`` (what the
  node does: one ``sync()`` for every save of a drain) it is durable once
  ``sync()`` returns (if the segment is full, a new one is created first:
  its ``BASE`` synced, the directory synced, the manifest rewritten; once
  per segment). Only then is memory updated, older snapshot files and dead
  segments deleted (and, after an install, the manifest rewritten).
* ``create_snapshot``: snapshot file durable, then a ``SNAPSHOT`` record,
  then the manifest.
* ``compact``: a ``COMPACT`` record, then deletion of segments it obsoletes,
  then the manifest.
* ``close``: the WAL synced, then the manifest (its floor then covers all).

Failures are fail-stop. Any ``OSError`` while writing (``ENOSPC`` included,
reported as "disk full") raises ``StorageFailedError`` and every later write
is refused: after a failed fsync the kernel may have dropped the dirty pages
and cleared the error ("fsyncgate", PostgreSQL 2018), so retrying could
report success for data that is gone. The node must restart, and recovery
reads what actually reached the disk.

``fsync=False`` skips every fsync: fast, and *unsafe* — acknowledged writes
can be lost in a power failure. For tests and benchmarks only.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from raft.fileio import TMP_SUFFIX, FileLock, FileSystem, OsFileSystem
from raft.manifest import (
    MANIFEST_NAME,
    CorruptManifestError,
    Manifest,
    MissingDurableStateError,
    load_manifest,
)
from raft.membership import Membership
from raft.snapshot_store import CorruptSnapshotError, SnapshotStore
from raft.storage import (
    CompactedError,
    SnapshotOutOfDateError,
    StorageError,
    StoredLog,
    UnavailableError,
)
from raft.types import Entry, HardState, Snapshot, SnapshotMeta
from raft.wal import (
    DEFAULT_SEGMENT_BYTES,
    CompactMark,
    CorruptLogError,
    Record,
    SnapshotMark,
    Wal,
    WalState,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CorruptLogError",
    "CorruptManifestError",
    "CorruptSnapshotError",
    "FileStorage",
    "MissingDurableStateError",
    "StorageFailedError",
    "StorageLockedError",
]

log = logging.getLogger(__name__)


#: Entries freed per step when compaction drops the head of the log.
_FREE_SLICE = 4096


class StorageLockedError(StorageError):
    """Another ``FileStorage`` (in this or another process) has the directory."""


class StorageFailedError(StorageError):
    """A write failed; the storage refuses further writes (fail-stop)."""


def _describe(e: OSError) -> str:
    """``e`` as a phrase for the end of a one-line message."""
    if e.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if e.strerror is None:
        return str(e)
    # Not str(e) ("[Errno 13] Permission denied: 'path'"): the errno number
    # and the Python quoting are noise on an operator's terminal.
    return e.strerror if e.filename is None else f"{e.strerror} ({e.filename})"


class FileStorage(StoredLog):
    """Durable ``Storage`` in directory ``path``; see the module doc.

    ``segment_bytes``: WAL segment size bound (a batch may overshoot it).
    ``fsync=False`` is unsafe (tests and benchmarks only). ``fs`` is the
    file-system seam (``raft/fileio.py``), replaced in crash tests.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        fs: FileSystem | None = None,
    ) -> None:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        super().__init__()
        self._fs: FileSystem = fs if fs is not None else OsFileSystem()
        self._dir = os.fspath(path)
        self._fsync = fsync
        self._failed: str | None = None
        self._closed = False
        #: A commit-only change of the hard state not written yet (see save).
        self._hard_state_unwritten = False
        #: The data dir had a LOCK before this open: it was used before.
        self._had_lock = False
        self._lock = self._lock_dir()
        try:
            self._open(segment_bytes)
        except BaseException:
            self._lock.release()
            raise

    def _lock_dir(self) -> FileLock:
        fs = self._fs
        try:
            exists = fs.exists(self._dir)
            if exists and not fs.isdir(self._dir):
                raise StorageError(f"data dir {self._dir} exists and is not a directory")
            fs.makedirs(self._dir)
            if not exists and self._fsync:
                # A new directory's own name lives in its parent.
                fs.fsync_dir(os.path.dirname(os.path.abspath(self._dir)))
            lock_path = os.path.join(self._dir, "LOCK")
            self._had_lock = fs.exists(lock_path)
            return fs.lock(lock_path)
        except BlockingIOError as e:
            raise StorageLockedError(
                f"data dir {self._dir} is in use by another process (LOCK is held)"
            ) from e
        except OSError as e:
            raise StorageError(f"cannot open data dir {self._dir}: {_describe(e)}") from e

    def _open(self, segment_bytes: int) -> None:
        fs = self._fs
        manifest_path = os.path.join(self._dir, MANIFEST_NAME)
        wal_dir = os.path.join(self._dir, "wal")
        try:
            if fs.exists(manifest_path + TMP_SUFFIX):
                fs.remove(manifest_path + TMP_SUFFIX)  # a crash during its update
            expect = load_manifest(fs, manifest_path)
            if not fs.isdir(wal_dir):
                self._check_fresh(wal_dir, manifest_path, expect)
            # wal/ before snap/ (a crash between them must not leave snap/
            # alone: that reads as a lost wal/), and both durable before the
            # manifest is written, which vouches for wal/.
            fs.makedirs(wal_dir)
            self._snaps = SnapshotStore(fs, os.path.join(self._dir, "snap"), fsync=self._fsync)
            self._snaps.remove_temporaries()
            if self._fsync:
                fs.fsync_dir(self._dir)  # the wal/ and snap/ entries themselves
            self._wal, rec = Wal.open(
                fs,
                wal_dir,
                segment_bytes=segment_bytes,
                fsync=self._fsync,
                manifest_path=manifest_path,
                expect=expect,
            )
            if expect is None:
                log.info("%s: wrote %s (none before: a new data dir or an older release's)",
                         self._dir, MANIFEST_NAME)
            self._hard_state = rec.hard_state
            self._entries = rec.entries
            self._snapshot = self._load_snapshot(rec.snap_index, rec.snap_term)
        except OSError as e:
            raise StorageError(f"cannot open data dir {self._dir}: {_describe(e)}") from e
        log.info(
            "opened %s: snapshot %d, log %d..%d, %s",
            self._dir,
            self._snapshot.meta.index,
            self.first_index(),
            self.last_index(),
            self._hard_state,
        )

    def _check_fresh(self, wal_dir: str, manifest_path: str, expect: Manifest | None) -> None:
        """``wal/`` does not exist: fine for a new data dir, but if anything
        shows the directory was used, the log was lost with it."""
        if expect is not None:
            if not expect.newest:
                # No segment was ever created (one is recorded before it takes
                # a batch): nothing was written that could be lost.
                log.warning("%s is missing; %s records no segment: starting empty",
                            wal_dir, manifest_path)
                return
            raise MissingDurableStateError(
                f"{wal_dir} is missing: {manifest_path} records {expect.newest} as the "
                "newest WAL segment; starting with an empty log would lose acknowledged writes"
            )
        snap_dir = os.path.join(self._dir, "snap")
        if self._had_lock or self._fs.exists(snap_dir):
            evidence = "LOCK" if self._had_lock else "snap/"
            raise MissingDurableStateError(
                f"{wal_dir} is missing, but {os.path.join(self._dir, evidence)} shows the data dir "
                "was used before; starting with an empty log would lose acknowledged writes "
                "(if no node ever ran here, delete the data dir)"
            )

    def _load_snapshot(self, index: int, term: int) -> Snapshot:
        """The snapshot the WAL names; files it does not name are leftovers of
        interrupted operations (newer) or of cleanups a crash cut short (older)."""
        store = self._snaps
        others = [(i, t) for i, t in store.list() if (i, t) != (index, term)]
        for i, t in others:
            if i < index:
                continue
            if self._wal.segment_paths:
                log.warning("%s: removing unused snapshot %d (term %d)", self._dir, i, t)
                store.remove(i, t)
            else:
                # No WAL at all next to snapshot files: possibly a first
                # install cut short, possibly a lost wal/ directory. Keep
                # the files for an operator rather than delete them.
                log.warning(
                    "%s: ignoring snapshot %d (term %d) not named by the WAL", self._dir, i, t
                )
        if index == 0:
            return Snapshot()
        try:
            snap = store.load(index, term)
        except CorruptSnapshotError as e:
            # Fall back to an older snapshot if the log still reaches back to
            # it (nothing was compacted past it); else there is no way to
            # rebuild the state machine, and starting would lose data.
            offset = self._entries[0].index
            for i, t in reversed(others):
                if i < index and i >= offset:
                    try:
                        old = store.load(i, t)
                    except CorruptSnapshotError as e2:
                        log.warning("%s", e2)
                        continue
                    log.warning("%s; falling back to snapshot %d", e, i)
                    return old
            raise CorruptSnapshotError(f"{e}; no usable older snapshot") from e
        for i, t in others:
            if i < index:
                store.remove(i, t)
        return snap

    # -- read side: StoredLog ----------------------------------------------

    @property
    def path(self) -> str:
        return self._dir

    # -- write side --------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError(f"storage {self._dir} is closed")
        if self._failed is not None:
            raise StorageFailedError(
                f"storage {self._dir} refuses writes after an earlier failure "
                f"({self._failed}); restart to recover"
            )

    def _fail(self, e: OSError, what: str) -> StorageFailedError:
        reason = f"{_describe(e)} during {what}"
        self._failed = reason
        log.error("%s: %s; refusing further writes", self._dir, reason)
        return StorageFailedError(
            f"storage {self._dir}: {reason}; the storage now refuses writes, restart to recover"
        )

    def _wal_state(self) -> WalState:
        return WalState(
            snap_index=self._snapshot.meta.index,
            snap_term=self._snapshot.meta.term,
            offset_index=self._entries[0].index,
            offset_term=self._entries[0].term,
            hard_state=self._hard_state,
            last_index=self.last_index(),
        )

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> bool:
        self._check_writable()
        # Validate everything before writing anything, so a rejected call
        # leaves disk and memory untouched.
        install = snapshot if snapshot is not None and not snapshot.empty else None
        if install is not None and install.meta.index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {install.meta.index} is not newer than {self._snapshot.meta.index}"
            )
        for prev, e in itertools.pairwise(entries):
            if e.index != prev.index + 1:
                raise ValueError(f"entries not contiguous: {prev.index} then {e.index}")
        if install is not None:
            offset, last = install.meta.index, install.meta.index
        else:
            offset, last = self._offset(), self.last_index()
        new = list(entries)
        first = offset + 1
        # Entries already covered by the snapshot are committed and must agree
        # with it (Log Matching); skip them.
        if new and new[-1].index < first:
            new = []
        elif new and new[0].index < first:
            new = new[first - new[0].index :]
        if new and new[0].index > last + 1:
            raise UnavailableError(f"append at {new[0].index} leaves a gap after {last}")

        records: list[Record] = []
        if install is not None:
            records.append(SnapshotMark(install.meta.index, install.meta.term, reset=True))
        records.extend(new)
        # Only entries, a snapshot, a term or a vote are promises to others
        # (etcd's MustSync); a commit index alone can be relearned from the
        # leader, so it is not synced, and not even written on its own: it
        # rides along with the next write (or close). A leader's commit
        # advances in a Ready of its own, and that write was on the path
        # from a follower's acknowledgement to the client's answer.
        must_sync = bool(new) or install is not None or (
            hard_state is not None
            and (hard_state.term, hard_state.vote)
            != (self._hard_state.term, self._hard_state.vote)
        )
        if hard_state is not None and hard_state != self._hard_state:
            if not records and not must_sync:
                self._hard_state = hard_state
                self._hard_state_unwritten = True
                return False
            records.append(hard_state)
        elif self._hard_state_unwritten and records:
            records.append(self._hard_state)
        if not records:
            return False
        try:
            if install is not None:
                # The file first: the WAL record naming it must never be
                # durable while the file is not.
                self._snaps.save(install)
            self._wal.write(records, self._wal_state(), sync=sync and must_sync)
        except OSError as e:
            raise self._fail(e, "save") from e

        old_snap = self._snapshot
        if install is not None:
            self._snapshot = install
            self._entries = [Entry(index=install.meta.index, term=install.meta.term)]
        if new:
            del self._entries[new[0].index - self._offset() :]
            self._entries.extend(new)
        if hard_state is not None:
            self._hard_state = hard_state
        self._hard_state_unwritten = False
        if install is not None:
            self._cleanup(old_snap)
        return must_sync and not sync

    def sync(self) -> None:
        """Make everything written by ``save(..., sync=False)`` durable.

        May run in a worker thread as long as nothing else uses the storage
        meanwhile (the driver waits for it before its next write)."""
        self._check_writable()
        try:
            self._wal.sync()
        except OSError as e:
            raise self._fail(e, "sync") from e

    def create_snapshot(self, index: int, data: bytes, membership: Membership) -> Snapshot:
        self._check_writable()
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self._snapshot.meta.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} beyond last {self.last_index()}")
        meta = SnapshotMeta(index=index, term=self.term(index), membership=membership)
        snap = Snapshot(meta=meta, data=data)
        try:
            self._snaps.save(snap)
            self._wal.write([SnapshotMark(index, meta.term, reset=False)], self._wal_state())
        except OSError as e:
            raise self._fail(e, "create_snapshot") from e
        old, self._snapshot = self._snapshot, snap
        self._cleanup(old)
        return snap

    def compact(self, index: int) -> None:
        self._check_writable()
        offset = self._offset()
        if index <= offset:
            raise CompactedError(f"index {index} already compacted (first is {offset + 1})")
        if index > self._snapshot.meta.index:
            raise UnavailableError(
                f"cannot compact to {index} past the snapshot at {self._snapshot.meta.index}"
            )
        term = self.term(index)
        try:
            self._wal.write([CompactMark(index, term)], self._wal_state())
        except OSError as e:
            raise self._fail(e, "compact") from e
        old = self._entries
        self._entries = [Entry(index=index, term=term), *old[index - offset + 1 :]]
        # Free the forgotten entries a slice at a time: this may run in the
        # storage worker, and one deallocation of a whole log would hold the
        # GIL (and so the event loop) for tens of milliseconds.
        del old[index - offset + 1 :]
        while old:
            del old[-_FREE_SLICE:]
        self._release()

    def _cleanup(self, old_snap: Snapshot) -> None:
        """After a new snapshot is named durably: drop the old file and the
        segments the new log start made redundant."""
        try:
            if not old_snap.empty:
                self._snaps.remove(old_snap.meta.index, old_snap.meta.term)
        except OSError as e:
            raise self._fail(e, "snapshot cleanup") from e
        self._release()

    def _release(self) -> None:
        """Delete the segments the log start made redundant, then bring the
        manifest up to date (snapshots and compactions are rare: its two
        fsyncs stay off the hot path)."""
        try:
            removed = self._wal.release(self._offset())
        except OSError as e:
            raise self._fail(e, "segment deletion") from e
        for path in removed:
            log.debug("removed WAL segment %s", path)
        try:
            self._wal.record()
        except OSError as e:
            raise self._fail(e, "manifest update") from e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._hard_state_unwritten and self._failed is None:
                # A clean stop keeps the latest commit index (unsynced: it
                # may be relearned anyway, so a failure here loses nothing).
                try:
                    self._wal.write([self._hard_state], self._wal_state(), sync=False)
                except OSError as e:
                    log.warning("%s: commit index not written at close: %s",
                                self._dir, _describe(e))
            if self._failed is None:
                # A clean stop vouches for the whole log: the next open then
                # detects any loss of it, not only of what came before the
                # last rotation or snapshot.
                try:
                    self._wal.sync()
                    self._wal.record()
                except OSError as e:
                    log.warning("%s: %s not updated at close: %s",
                                self._dir, MANIFEST_NAME, _describe(e))
            self._wal.close()
        finally:
            self._lock.release()

    def __enter__(self) -> FileStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileStorage({self._dir!r})"
