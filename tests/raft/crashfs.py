"""An in-memory ``FileSystem`` that can crash (test double for raft/fileio.py).

It models what POSIX promises and no more:

* file contents are durable up to the last ``sync()`` of the file;
* a name (creation, rename, removal) is durable only after ``fsync_dir`` of
  its directory; until then a crash reverts the directory to its last
  synced listing (the file's inode, and its synced contents, live on under
  the old name, or nowhere).

Every mutating operation counts as one step. ``crash_at=k`` raises
``SimulatedCrash`` at step ``k`` — before the operation, except for a write,
which reaches the page cache first (so a torn image can keep part of it).
``fail_at=k`` raises ``OSError(fail_errno)`` at step ``k`` instead, and the
file system keeps working. ``image()`` is what a reboot would find: per
durable name, the synced content; with ``torn=rng`` also a random prefix of
the unsynced appended bytes, sometimes zeroed, sometimes followed by zero
fill (a torn write). ``materialize`` writes an image into a real directory.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from raft.fileio import FileLock, WritableFile

__all__ = ["CrashingFileSystem", "SimulatedCrash", "load_image", "materialize"]


class SimulatedCrash(BaseException):
    """The process "died". A BaseException, so no ``except OSError`` or
    ``except Exception`` in the code under test can swallow it."""


@dataclass(eq=False)
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""


def _norm(path: str) -> str:
    return os.path.normpath(path)


class _File:
    def __init__(self, fs: CrashingFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self._path = path
        self._inode = inode
        self._closed = False

    def write(self, data: bytes) -> None:
        assert not self._closed
        self._inode.data += data
        self._fs._step(f"write {self._path} {len(data)}B")

    def sync(self) -> None:
        assert not self._closed
        self._fs._step(f"sync {self._path}")
        self._inode.durable = bytes(self._inode.data)

    def truncate(self, size: int) -> None:
        self._fs._step(f"truncate {self._path} {size}")
        del self._inode.data[size:]

    def close(self) -> None:
        self._closed = True


class _NoLock:
    def release(self) -> None:
        pass


class CrashingFileSystem:
    def __init__(
        self,
        image: dict[str, bytes] | None = None,
        *,
        crash_at: int | None = None,
        fail_at: int | None = None,
        fail_errno: int = errno.ENOSPC,
    ) -> None:
        self.names: dict[str, _Inode] = {}
        self.durable_names: dict[str, _Inode] = {}
        self.dirs: set[str] = {"/"}
        self.steps = 0
        self.trace: list[str] = []
        self.crash_at = crash_at
        self.fail_at = fail_at
        self.fail_errno = fail_errno
        self.crashed = False
        for path, content in (image or {}).items():
            inode = _Inode(bytearray(content), content)
            self.names[_norm(path)] = self.durable_names[_norm(path)] = inode
            self.makedirs(os.path.dirname(_norm(path)))

    def _step(self, what: str) -> None:
        if self.crashed:
            raise SimulatedCrash("already crashed")
        self.steps += 1
        self.trace.append(what)
        if self.steps == self.crash_at:
            self.crashed = True
            raise SimulatedCrash(f"crash at step {self.steps}: {what}")
        if self.steps == self.fail_at:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))

    # -- FileSystem --------------------------------------------------------

    def makedirs(self, path: str) -> None:
        # Directories are modelled as durable at once (the storage fsyncs
        # the parent after creating its subdirectories anyway).
        path = _norm(path)
        if path in self.names:
            raise FileExistsError(errno.EEXIST, "is a file", path)
        while path not in self.dirs:
            self.dirs.add(path)
            path = os.path.dirname(path)

    def isdir(self, path: str) -> bool:
        return _norm(path) in self.dirs

    def exists(self, path: str) -> bool:
        return _norm(path) in self.dirs or _norm(path) in self.names

    def listdir(self, path: str) -> list[str]:
        path = _norm(path)
        if path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        out = [os.path.basename(p) for p in self.names if os.path.dirname(p) == path]
        out += [os.path.basename(d) for d in self.dirs if d != path and os.path.dirname(d) == path]
        return sorted(out)

    def read(self, path: str) -> bytes:
        if self.crashed:
            raise SimulatedCrash("already crashed")
        try:
            return bytes(self.names[_norm(path)].data)
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", path) from None

    def open_append(self, path: str) -> WritableFile:
        path = _norm(path)
        inode = self.names.get(path)
        if inode is None:
            self._step(f"create {path}")
            inode = self.names[path] = _Inode()
        return _File(self, path, inode)

    def rename(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        self._step(f"rename {src} {dst}")
        self.names[dst] = self.names.pop(src)

    def remove(self, path: str) -> None:
        path = _norm(path)
        self._step(f"remove {path}")
        try:
            del self.names[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", path) from None

    def fsync_dir(self, path: str) -> None:
        path = _norm(path)
        self._step(f"fsync_dir {path}")
        for p in [p for p in self.durable_names if os.path.dirname(p) == path]:
            del self.durable_names[p]
        for p, inode in self.names.items():
            if os.path.dirname(p) == path:
                self.durable_names[p] = inode

    def lock(self, path: str) -> FileLock:
        return _NoLock()

    # -- crash images ------------------------------------------------------

    def image(self, torn: random.Random | None = None) -> dict[str, bytes]:
        """The files a reboot would find (see module doc)."""
        out: dict[str, bytes] = {}
        for path, inode in self.durable_names.items():
            content = inode.durable
            extra = bytes(inode.data[len(content) :])
            if torn is not None and extra and inode.data.startswith(content):
                kept = extra[: torn.randint(0, len(extra))]
                r = torn.random()
                if r < 0.2:
                    kept = bytes(len(kept))  # size reached disk, data did not
                elif r < 0.4:
                    kept += bytes(torn.randint(1, 64))  # preallocated zeros
                content += kept
            out[path] = content
        return out


def materialize(image: dict[str, bytes], root: Path) -> None:
    for path, content in image.items():
        dst = root / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(content)


def load_image(root: Path, prefix: str = "/") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in root.rglob("*"):
        if p.is_file():
            out[os.path.join(prefix, str(p.relative_to(root)))] = p.read_bytes()
    return out
