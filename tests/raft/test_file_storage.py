"""FileStorage specifics: opening, locking, group commit, fail-stop."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raft.file_storage import FileStorage, StorageFailedError, StorageLockedError
from raft.membership import Membership
from raft.storage import StorageError
from raft.types import Entry, HardState, Snapshot, SnapshotMeta
from tests.raft.crashfs import CrashingFileSystem


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, b"v%d" % i) for i in range(lo, hi + 1)]


def ops(fs: CrashingFileSystem, since: int = 0) -> list[str]:
    return [t.split()[0] for t in fs.trace[since:]]


# -- opening -------------------------------------------------------------------------


def test_layout_and_reopen(tmp_path: Path) -> None:
    d = tmp_path / "node0"
    with FileStorage(d) as s:
        s.save(HardState(2, 1, 3), ents(1, 3))
        assert s.path == str(d)
    assert sorted(p.name for p in d.iterdir()) == ["LOCK", "MANIFEST", "snap", "wal"]
    with FileStorage(str(d)) as s:
        assert s.initial_state() == (HardState(2, 1, 3), Membership())
        assert s.entries(1, 4) == ents(1, 3)


def test_second_open_is_locked_out(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    with pytest.raises(StorageLockedError, match="in use"):
        FileStorage(tmp_path)
    s.close()
    FileStorage(tmp_path).close()


def test_lock_holds_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from raft.file_storage import FileStorage, StorageLockedError\n"
        "try:\n"
        "    FileStorage(sys.argv[1])\n"
        "except StorageLockedError:\n"
        "    sys.exit(3)\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    with FileStorage(tmp_path):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, check=False)
        assert r.returncode == 3
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, check=False)
    assert r.returncode == 0


def test_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        FileStorage(f)
    with pytest.raises(StorageError, match="cannot open data dir"):
        FileStorage(f / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    try:
        with pytest.raises(StorageError, match="cannot open data dir"):
            FileStorage(d)
    finally:
        d.chmod(0o700)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileStorage(tmp_path, segment_bytes=0)
    with FileStorage(tmp_path) as s, pytest.raises(ValueError, match="contiguous"):
        s.save(None, [Entry(1, 1), Entry(3, 1)])


def test_close_is_idempotent_and_stops_writes(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    s.save(None, ents(1, 2))
    s.close()
    s.close()
    assert s.last_index() == 2  # reads still answer from memory
    with pytest.raises(StorageError, match="closed"):
        s.save(None, ents(3, 3))


# -- group commit ----------------------------------------------------------------------


def test_one_write_and_one_sync_per_save() -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs)
    n = len(fs.trace)
    s.save(HardState(1, 0, 0), ents(1, 128))
    # First save creates segment 1: its BASE and its name durable, then the
    # manifest naming it (off the hot path: once per segment), then the batch.
    assert ops(fs, n) == [
        "create", "write", "sync", "fsync_dir",  # segment 1 with its BASE
        "create", "truncate", "write", "sync", "rename", "fsync_dir",  # MANIFEST
        "write", "sync",  # the batch
    ]  # fmt: skip
    n = len(fs.trace)
    s.save(HardState(2, 1, 128), ents(129, 256), None)
    assert ops(fs, n) == ["write", "sync"]


def test_nothing_to_do_costs_nothing() -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs)
    s.save(HardState(1, 0, 0), ents(1, 2))
    n = len(fs.trace)
    s.save(None, [])
    s.save(HardState(1, 0, 0), [])  # unchanged hard state: not rewritten
    s.save(None, [], Snapshot())  # an empty snapshot is no snapshot
    assert ops(fs, n) == []


def test_a_commit_alone_rides_along_with_the_next_write() -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs)
    s.save(HardState(1, 0, 0), ents(1, 3))
    n = len(fs.trace)
    assert s.save(HardState(1, 0, 2), [], sync=False) is False  # nothing to sync
    assert ops(fs, n) == []  # and nothing written
    s.save(None, ents(4, 4))
    assert ops(fs, n) == ["write", "sync"]
    with FileStorage("/d", fs=CrashingFileSystem(fs.image())) as after_crash:
        assert after_crash.initial_state()[0] == HardState(1, 0, 2)
        assert after_crash.last_index() == 4
    s.save(HardState(1, 0, 4), [])
    with FileStorage("/d", fs=CrashingFileSystem(fs.image())) as after_crash:
        # Lost in a crash: it is relearned from the leader.
        assert after_crash.initial_state()[0] == HardState(1, 0, 2)
    s.close()  # a clean stop writes it (no reboot: the same files)
    with FileStorage("/d", fs=fs) as reopened:
        assert reopened.initial_state()[0] == HardState(1, 0, 4)


def test_a_new_term_or_vote_is_written_and_synced_at_once() -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs)
    s.save(HardState(1, 0, 0), ents(1, 1))
    n = len(fs.trace)
    assert s.save(HardState(2, 3, 0), [], sync=False) is True
    assert ops(fs, n) == ["write"]


def test_fsync_false_never_syncs() -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs, fsync=False, segment_bytes=100)
    for i in range(1, 20):
        s.save(HardState(1, 0, i), ents(i, i))
    s.create_snapshot(10, b"x", Membership.of({1}))
    s.compact(10)
    assert "sync" not in ops(fs) and "fsync_dir" not in ops(fs)


def test_install_writes_snapshot_file_before_the_wal() -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs)
    s.save(None, ents(1, 5))
    s.create_snapshot(3, b"sm3", Membership.of({1}))
    n = len(fs.trace)
    snapshot = Snapshot(SnapshotMeta(9, 2, Membership.of({1})), b"i")
    s.save(HardState(3, 1, 9), ents(10, 12, 3), snapshot)
    trace = fs.trace[n:]
    assert [t.split()[0] for t in trace] == [
        "create", "truncate", "write", "sync", "rename", "fsync_dir",  # snapshot file
        "write", "sync",  # WAL batch: SNAPSHOT reset + entries + hard state
        "remove",  # the old snapshot file, only now
        "create", "truncate", "write", "sync", "rename", "fsync_dir",  # MANIFEST
    ]  # fmt: skip
    assert trace[-7].endswith("00000000000000000003-00000000000000000001.snap")


def test_data_dir_stays_bounded(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes=4096, fsync=False) as s:
        for i in range(1, 3001):
            s.save(HardState(1, 0, i), [Entry(i, 1, b"x" * 100)])
            if i % 500 == 0:
                s.create_snapshot(i, b"state", Membership.of({1}))
                s.compact(i - 10)
        wal = list((tmp_path / "wal").iterdir())
        snaps = list((tmp_path / "snap").iterdir())
        assert len(snaps) == 1
        assert sum(p.stat().st_size for p in wal) < 3 * 4096 + 1000


# -- fail-stop --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["write", "sync"])
def test_enospc_is_reported_and_fail_stop(which: str) -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs)
    s.save(None, ents(1, 3))
    n = fs.steps
    fs.fail_at = n + (1 if which == "write" else 2)
    with pytest.raises(StorageFailedError, match=r"disk full \(ENOSPC\) during save"):
        s.save(HardState(2, 0, 0), ents(4, 5))
    # In memory nothing changed; writes are refused even once space is back.
    assert s.last_index() == 3
    assert s.hard_state == HardState()
    with pytest.raises(StorageFailedError, match="refuses writes"):
        s.save(None, ents(4, 4))
    with pytest.raises(StorageFailedError):
        s.create_snapshot(2, b"", Membership())
    with pytest.raises(StorageFailedError):
        s.compact(1)


def test_eio_on_fsync_is_fail_stop() -> None:
    fs = CrashingFileSystem(fail_errno=errno.EIO)
    s = FileStorage("/d", fs=fs)
    fs.fail_at = fs.steps + 2
    with pytest.raises(StorageFailedError, match="Input/output error during save"):
        s.save(None, ents(1, 1))
    with pytest.raises(StorageFailedError):
        s.save(None, ents(1, 1))


def test_real_full_disk(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC: make it segment 1."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    d2 = tmp_path / "d2"
    (d2 / "wal").mkdir(parents=True)
    s2 = FileStorage(d2)
    (d2 / "wal" / f"{1:020d}-{1:020d}.wal").symlink_to("/dev/full")
    with pytest.raises(StorageFailedError, match="disk full"):
        s2.save(None, ents(1, 1))
    s2.close()
