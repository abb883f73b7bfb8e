"""The file-system seam of the durable storage.

``raft/wal.py``, ``raft/snapshot_store.py`` and ``raft/file_storage.py`` do all
their I/O through a ``FileSystem``: the real one (``OsFileSystem``) calls
``os``; tests hand in a double (``tests/raft/crashfs.py``) that remembers
which bytes and which directory entries were made durable, and can "crash",
keeping only those. The seam is deliberately narrow: whole-file reads,
append-only writes, and the few metadata operations a WAL and an atomic
rename need.

Durability rules the callers rely on (POSIX, and what the test double models):

* ``WritableFile.sync()`` makes the file's *contents* durable (fdatasync: the
  size is included, other metadata is not needed to read the data back).
* A new name (create, rename, remove) is durable only after ``fsync_dir`` of
  its directory. A file created and synced but whose directory was not
  synced may vanish in a crash.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Protocol

__all__ = ["TMP_SUFFIX", "FileLock", "FileSystem", "OsFileSystem", "WritableFile", "write_atomic"]

#: Suffix of the temporary file ``write_atomic`` renames into place; a crash
#: can leave one behind, and the owner of the directory deletes it at open.
TMP_SUFFIX = ".tmp"


class WritableFile(Protocol):
    """An open file; writes go to its end."""

    def write(self, data: bytes) -> None:
        """Write all of ``data`` at the end of the file (not yet durable)."""
        ...

    def sync(self) -> None:
        """Make everything written so far durable (fdatasync)."""
        ...

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes (durable after ``sync``)."""
        ...

    def close(self) -> None: ...


class FileLock(Protocol):
    def release(self) -> None: ...


class FileSystem(Protocol):
    def makedirs(self, path: str) -> None:
        """Create ``path`` and missing parents; no error if it exists."""
        ...

    def isdir(self, path: str) -> bool: ...

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def read(self, path: str) -> bytes:
        """The whole content of the file."""
        ...

    def open_append(self, path: str) -> WritableFile:
        """Open for appending, creating the file if needed."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` by ``src`` (durable after ``fsync_dir``)."""
        ...

    def remove(self, path: str) -> None: ...

    def fsync_dir(self, path: str) -> None:
        """Make creations, renames and removals in directory ``path`` durable."""
        ...

    def lock(self, path: str) -> FileLock:
        """Take an exclusive, non-blocking lock on file ``path`` (created if
        missing). Raises ``BlockingIOError`` if another holder has it."""
        ...


def _full_sync(fd: int) -> None:
    # fdatasync skips metadata that is not needed to read the data back
    # (mtime), which saves a journal commit per call on most file systems;
    # the file size *is* flushed, so appended records are covered.
    # macOS's fsync does not flush the drive's cache; F_FULLFSYNC does.
    full = getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:
            pass
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - platforms without fdatasync
        os.fsync(fd)


class _OsFile:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def sync(self) -> None:
        _full_sync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class _OsLock:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            # Closing the descriptor drops the flock.
            os.close(fd)


class OsFileSystem:
    """The real file system."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_append(self, path: str) -> WritableFile:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return _OsFile(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: str) -> FileLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # flock locks belong to the open file description, so a second
            # open of the same directory conflicts even inside one process.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise BlockingIOError(e.errno, f"{path} is locked") from e
            raise
        return _OsLock(fd)


def write_atomic(fs: FileSystem, path: str, data: bytes, *, fsync: bool = True) -> None:
    """Replace file ``path`` by ``data`` atomically and durably: write
    ``path + TMP_SUFFIX``, sync it, rename it over ``path``, sync the
    directory. A crash leaves the old content or the new one, never a mix
    (plus perhaps a stray temporary). ``fsync=False`` skips both syncs
    (still atomic against a process crash, not a power failure). Raises
    ``OSError``."""
    tmp = path + TMP_SUFFIX
    f = fs.open_append(tmp)
    try:
        # A stale temp from an earlier failed attempt must not prefix ours.
        f.truncate(0)
        f.write(data)
        if fsync:
            # The data must be durable *before* the rename can be: else a
            # crash could leave the final name pointing at an empty file.
            f.sync()
    finally:
        f.close()
    fs.rename(tmp, path)
    if fsync:
        fs.fsync_dir(os.path.dirname(path) or ".")
