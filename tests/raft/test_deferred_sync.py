"""``save(..., sync=False)`` + ``sync()``: what lets the node fsync off its
event loop. Data is visible at once but durable only after ``sync()``; a
commit-index change alone is never worth an fsync."""

from __future__ import annotations

from raft.file_storage import FileStorage
from raft.types import Entry, HardState
from tests.raft.crashfs import CrashingFileSystem

DIR = "/data"


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(index=i, term=term, data=f"e{i}".encode()) for i in range(lo, hi + 1)]


def reboot(fs: CrashingFileSystem) -> FileStorage:
    return FileStorage(DIR, fs=CrashingFileSystem(fs.image()))


def syncs(fs: CrashingFileSystem) -> int:
    return sum(1 for step in fs.trace if step.startswith("sync"))


def test_unsynced_save_is_visible_but_not_durable_until_sync() -> None:
    fs = CrashingFileSystem()
    st = FileStorage(DIR, fs=fs)
    assert st.save(HardState(term=1, vote=0), entries(1, 3)) is False  # synced already
    needs = st.save(HardState(term=1, vote=0, commit=3), entries(4, 6), sync=False)
    assert needs is True
    assert st.last_index() == 6 and st.entries(4, 7)[-1].data == b"e6"
    assert reboot(fs).last_index() == 3  # a crash now loses the unsynced batch
    before = syncs(fs)
    st.sync()
    assert syncs(fs) == before + 1
    assert reboot(fs).last_index() == 6
    st.sync()  # nothing new: no I/O
    assert syncs(fs) == before + 1
    st.close()


def test_commit_only_change_needs_no_fsync() -> None:
    fs = CrashingFileSystem()
    st = FileStorage(DIR, fs=fs)
    st.save(HardState(term=1, vote=0), entries(1, 3))
    before = syncs(fs)
    assert st.save(HardState(term=1, vote=0, commit=3), []) is False
    assert st.save(HardState(term=1, vote=0, commit=3), [], sync=False) is False
    assert syncs(fs) == before
    # Term and vote changes are promises: they are synced.
    st.save(HardState(term=2, vote=1, commit=3), [])
    assert syncs(fs) == before + 1
    assert reboot(fs).hard_state.term == 2
    st.close()


def test_a_synced_save_covers_earlier_unsynced_ones() -> None:
    fs = CrashingFileSystem()
    st = FileStorage(DIR, fs=fs)
    st.save(HardState(term=1, vote=0), entries(1, 2), sync=False)
    st.save(None, entries(3, 4))
    assert reboot(fs).last_index() == 4
    st.close()
