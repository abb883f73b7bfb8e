"""WAL throughput: ``FileStorage.save`` with fsync on, by batch size.

    .venv/bin/python benchmarks/wal_bench.py [--dir DIR] [--seconds S]

Each case appends batches of 1, 16 and 128 entries of 100 bytes (plus a hard
state, as a Raft Ready carries) to a fresh storage for ``--seconds`` and
prints saves/s, entries/s, MB/s and fsyncs/s (counted, file and directory).
The raw fsync rate of the disk (write 100 bytes + fdatasync, in a loop) is
printed first for reference: with group commit, saves/s should sit close to
it, and entries/s should grow with the batch size.

Run it on the disk you care about: ``--dir`` defaults to a temporary
directory under the current one, because /tmp is often a tmpfs where fsync
costs nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raft.file_storage import FileStorage
from raft.fileio import OsFileSystem, WritableFile
from raft.types import Entry, HardState


class _CountingFile:
    def __init__(self, inner: WritableFile, fs: CountingFileSystem) -> None:
        self._inner = inner
        self._fs = fs

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def sync(self) -> None:
        self._fs.syncs += 1
        self._inner.sync()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def close(self) -> None:
        self._inner.close()


class CountingFileSystem(OsFileSystem):
    """The real file system, counting file and directory syncs."""

    def __init__(self) -> None:
        self.syncs = 0

    def open_append(self, path: str) -> WritableFile:
        return _CountingFile(super().open_append(path), self)

    def fsync_dir(self, path: str) -> None:
        self.syncs += 1
        super().fsync_dir(path)


def raw_fsync_rate(directory: Path, seconds: float) -> float:
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sync = getattr(os, "fdatasync", os.fsync)
    n = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            os.write(fd, b"x" * 100)
            sync(fd)
            n += 1
    finally:
        os.close(fd)
        path.unlink()
    return n / (time.perf_counter() - start)


def bench_case(directory: Path, batch: int, seconds: float, fsync: bool) -> dict[str, float]:
    fs = CountingFileSystem()
    payload = b"v" * 100
    index = 0
    saves = 0
    with FileStorage(directory, fs=fs, fsync=fsync) as s:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            entries = [Entry(index + k, 1, payload) for k in range(1, batch + 1)]
            index += batch
            s.save(HardState(term=1, vote=0, commit=index - batch), entries)
            saves += 1
        elapsed = time.perf_counter() - start
    return {
        "saves": saves / elapsed,
        "entries": saves * batch / elapsed,
        "mbytes": saves * batch * len(payload) / elapsed / 1e6,
        "fsyncs": fs.syncs / elapsed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: ./)")
    p.add_argument("--seconds", type=float, default=2.0, help="per case (default 2)")
    p.add_argument("--no-fsync", action="store_true", help="unsafe mode, for comparison")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="wal_bench.", dir=args.dir or Path.cwd()))
    try:
        print(f"directory: {root}")
        print(f"raw fdatasync of 100-byte appends: {raw_fsync_rate(root, args.seconds):,.0f}/s")
        print(f"{'batch':>6} {'saves/s':>10} {'entries/s':>11} {'MB/s':>7} {'fsyncs/s':>9}")
        for batch in (1, 16, 128):
            r = bench_case(root / f"b{batch}", batch, args.seconds, fsync=not args.no_fsync)
            print(
                f"{batch:>6} {r['saves']:>10,.0f} {r['entries']:>11,.0f}"
                f" {r['mbytes']:>7.1f} {r['fsyncs']:>9,.0f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
