"""Crash consistency: cut the storage at every step, reboot, compare.

A crash keeps only what the file system made durable (``crashfs``). After
reopening, the storage must equal a ``MemoryStorage`` fed every operation
that returned before the crash, plus possibly the one in flight (all or
nothing, never a part of it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.file_storage import FileStorage
from raft.membership import Membership
from raft.storage import MemoryStorage, StorageError
from raft.types import NONE, Entry, HardState, Snapshot, SnapshotMeta
from tests.raft.crashfs import CrashingFileSystem, SimulatedCrash, materialize

DIR = "/data"
SEG = 200  # tiny segments: rotation and deletion happen all the time

Op = Callable[[Any], object]


def state(s: Any) -> tuple[object, ...]:
    """Everything observable through the Storage read side."""
    first, last = s.first_index(), s.last_index()
    return (
        s.initial_state(),
        s.snapshot(),
        first,
        last,
        s.term(first - 1),
        tuple(s.entries(first, last + 1)),
    )


def ents(lo: int, hi: int, term: int, size: int = 20) -> list[Entry]:
    return [Entry(index=i, term=term, data=bytes([i % 251]) * size) for i in range(lo, hi + 1)]


def snap(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, Membership.of({0, 1, 2})), b"app-state@%d" % index)


# A scenario touching every write path: group commits, rotation, conflicting
# rewrites, snapshot creation, compaction with segment deletion, install.
SCENARIO: list[Op] = [
    lambda s: s.save(HardState(1, 0, 0), ents(1, 6, 1)),
    lambda s: s.save(HardState(1, 0, 4), ents(7, 12, 1)),
    lambda s: s.save(None, ents(13, 16, 1)),
    lambda s: s.save(HardState(2, 1, 10), ents(14, 18, 2)),  # rewrite 14..16
    lambda s: s.create_snapshot(10, b"sm@10", Membership.of({0, 1, 2})),
    lambda s: s.compact(9),
    lambda s: s.save(HardState(2, 1, 16), ents(19, 24, 2)),
    lambda s: s.create_snapshot(20, b"sm@20", Membership.of({0, 1})),
    lambda s: s.compact(20),
    lambda s: s.save(HardState(3, 2, 20), ents(22, 25, 3), snap(21, 2)),  # install
    lambda s: s.save(None, ents(26, 40, 3)),
    lambda s: s.save(HardState(4, NONE, 30), [], snap(35, 3)),  # install past log
    lambda s: s.save(HardState(4, 0, 35), ents(36, 45, 4)),
    lambda s: s.create_snapshot(44, b"sm@44", Membership.of({0, 1, 2})),
    lambda s: s.compact(44),
    lambda s: s.save(HardState(5, 0, 44), ents(45, 47, 5)),
]


def model_states() -> list[tuple[object, ...]]:
    m = MemoryStorage()
    out = [state(m)]
    for op in SCENARIO:
        op(m)
        out.append(state(m))
    return out


MODELS = model_states()


def run(fs: CrashingFileSystem) -> int:
    """Run the scenario; return how many operations returned."""
    done = 0
    try:
        s = FileStorage(DIR, fs=fs, segment_bytes=SEG)
        for op in SCENARIO:
            op(s)
            done += 1
        s.close()
    except SimulatedCrash:
        pass
    return done


def reopen(image: dict[str, bytes], crash_at: int | None = None) -> FileStorage:
    return FileStorage(DIR, fs=CrashingFileSystem(image, crash_at=crash_at), segment_bytes=SEG)


_probe = CrashingFileSystem()
run(_probe)
TOTAL_STEPS = _probe.steps


def test_scenario_without_crash_matches_model() -> None:
    fs = CrashingFileSystem()
    assert run(fs) == len(SCENARIO)
    s = reopen(fs.image())
    assert state(s) == MODELS[-1]
    assert TOTAL_STEPS > 80


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
def test_crash_at_every_step(torn: bool) -> None:
    """Every step of every write path: before/after each write, sync, rename,
    directory sync, removal; during rotation, snapshot write, compaction."""
    for k in range(1, TOTAL_STEPS + 1):
        fs = CrashingFileSystem(crash_at=k)
        done = run(fs)
        image = fs.image(torn=random.Random(k) if torn else None)
        s = reopen(image)
        got = state(s)
        allowed = MODELS[done : done + 2]
        assert got in allowed, f"crash at step {k} ({fs.trace[-1]}): {done} ops acked"
        # The reopened storage is fully usable: write, reopen, still there.
        s.save(HardState(99, 0, 0), [])
        s.close()
        again = reopen(CrashingFileSystem(image).image())
        assert state(again)[1:] == got[1:]


def _manifest_window_steps() -> list[int]:
    """Steps that write the manifest, and the steps of every rotation from
    the new segment's creation to the manifest naming it (a crash there
    leaves a segment newer than the manifest: fine, and must stay so)."""
    out: set[int] = set()
    rotating = False
    for k, what in enumerate(_probe.trace, start=1):
        if what.startswith(f"create {DIR}/wal/"):
            rotating = True
        manifest_synced = what == f"fsync_dir {DIR}" and "MANIFEST" in _probe.trace[k - 2]
        if rotating or "MANIFEST" in what or manifest_synced:
            out.add(k)
        if manifest_synced:
            rotating = False
    return sorted(out)


MANIFEST_STEPS = _manifest_window_steps()


def test_crash_at_each_manifest_step() -> None:
    """The manifest update adds crash points (temporary created, written,
    synced, renamed, directory synced) at open, at every rotation, after
    every snapshot or compaction. A crash at each of them, with a clean or a
    torn image, reopens to an allowed state and never refuses to start."""
    assert sum("rename /data/MANIFEST.tmp" in t for t in _probe.trace) >= 8
    assert len(MANIFEST_STEPS) > 40
    for k in MANIFEST_STEPS:
        for torn in (None, random.Random(k)):
            fs = CrashingFileSystem(crash_at=k)
            done = run(fs)
            s = reopen(fs.image(torn=torn))
            assert state(s) in MODELS[done : done + 2], f"crash at step {k} ({fs.trace[-1]})"
            s.close()


def test_crash_during_recovery() -> None:
    """Recovery itself writes (tail truncation, removing a torn segment);
    crashing there and recovering again converges to the same state."""
    rng = random.Random(7)
    checked = 0
    for k in range(1, TOTAL_STEPS + 1, 3):
        fs = CrashingFileSystem(crash_at=k)
        done = run(fs)
        image = fs.image(torn=rng)
        expected = state(reopen(image))
        assert expected in MODELS[done : done + 2]
        for j in range(1, 6):
            fs2 = CrashingFileSystem(image, crash_at=j)
            try:
                FileStorage(DIR, fs=fs2, segment_bytes=SEG)
            except SimulatedCrash:
                checked += 1
                assert state(reopen(fs2.image(torn=rng))) == expected
    assert checked > 0


def test_crash_images_open_on_the_real_file_system(tmp_path: Path) -> None:
    """The same durable images, written to a real directory, reopened with
    ``os`` (the code path a restarted node takes)."""
    for k in range(1, TOTAL_STEPS + 1, 2):
        fs = CrashingFileSystem(crash_at=k)
        done = run(fs)
        root = tmp_path / f"crash{k}"
        materialize(fs.image(torn=random.Random(k)), root)
        with FileStorage(root / DIR.lstrip("/"), segment_bytes=SEG) as s:
            assert state(s) in MODELS[done : done + 2]


def test_enospc_at_every_step_is_fail_stop() -> None:
    """An I/O error anywhere: the call fails with StorageError, later writes
    are refused, reads still answer, and a restart recovers a state that
    contains everything acknowledged."""
    for k in range(1, TOTAL_STEPS + 1):
        fs = CrashingFileSystem(fail_at=k)
        try:
            s = FileStorage(DIR, fs=fs, segment_bytes=SEG)
        except StorageError as e:
            assert "disk full" in str(e)
            continue
        done = 0
        try:
            for op in SCENARIO:
                op(s)
                done += 1
        except StorageError as e:
            assert "disk full" in str(e)
            with pytest.raises(StorageError, match="refuses writes"):
                s.save(HardState(50), [])
            state(s)  # reads still work
        s.close()
        if done == len(SCENARIO):
            continue
        after = state(reopen(fs.image()))
        assert after in MODELS[done : done + 2], f"failure at step {k}"


# -- randomized ------------------------------------------------------------------


@dataclass(frozen=True)
class Save:
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None

    def __call__(self, s: Any) -> object:
        return s.save(self.hard_state, self.entries, self.snapshot)


@dataclass(frozen=True)
class CreateSnapshot:
    index: int
    data: bytes
    membership: Membership

    def __call__(self, s: Any) -> object:
        return s.create_snapshot(self.index, self.data, self.membership)


@dataclass(frozen=True)
class Compact:
    index: int

    def __call__(self, s: Any) -> object:
        return s.compact(self.index)


KINDS = st.sampled_from(["save"] * 6 + ["install", "create", "compact", "bad"])
HARD_STATES = st.none() | st.builds(
    HardState, st.integers(0, 9), st.integers(-1, 3), st.integers(0, 60)
)
SMALL = st.integers(0, 9)


@st.composite
def operation(draw: st.DrawFn, m: MemoryStorage) -> Op:
    """A random write against model ``m``'s current state: valid, or
    rejected by both implementations alike."""
    first, last = m.first_index(), m.last_index()
    snap_index = m.snapshot().meta.index
    kind = draw(KINDS)
    if kind == "create" and last > snap_index:
        idx = draw(st.integers(snap_index + 1, last))
        return CreateSnapshot(idx, b"sm%d" % idx, Membership.of({0, idx % 5}))
    if kind == "compact" and snap_index >= first:
        return Compact(draw(st.integers(first, snap_index)))
    if kind == "bad":
        return Compact(first - 1)  # CompactedError; changes nothing
    sn: Snapshot | None = None
    if kind == "install":
        sidx = snap_index + 1 + draw(SMALL)
        sn = Snapshot(SnapshotMeta(sidx, 1 + draw(SMALL), Membership.of({1, 2})), b"i%d" % sidx)
        first, last = sidx + 1, sidx
        snap_index = sidx
    # Entries up to the snapshot index are committed: Raft never rewrites
    # them (and MemoryStorage.compact breaks if they are cut off). Entries
    # before ``first`` are fine; they are skipped.
    lo_min = snap_index + 1 if snap_index >= first else max(1, first - 2)
    lo = draw(st.integers(lo_min, last + 1))
    n = draw(SMALL)
    term = 1 + draw(SMALL)
    size = draw(SMALL) * 7
    batch = tuple(Entry(i, term, bytes([i % 256]) * size) for i in range(lo, lo + n))
    hs = draw(HARD_STATES)
    return Save(hs, batch, sn)


def replay(history: list[Op]) -> MemoryStorage:
    m = MemoryStorage()
    for op in history:
        op(m)
    return m


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_operations_with_crashes(data: st.DataObject) -> None:
    """Random save/create_snapshot/compact, crashing at a random step, a
    clean or torn image, three rounds: the reopened storage always equals
    the model of the acknowledged operations (plus, maybe, the one in flight)."""
    model = MemoryStorage()
    history: list[Op] = []  # acknowledged (or landed) operations, for rollback
    image: dict[str, bytes] = {}
    for _round in range(3):
        crash_at = data.draw(st.integers(1, 150), label="crash_at")
        fs = CrashingFileSystem(image, crash_at=crash_at)
        before = after = state(model)
        inflight: Op | None = None
        try:
            s = FileStorage(DIR, fs=fs, segment_bytes=SEG)
            assert state(s) == before
            for _ in range(data.draw(st.integers(1, 25), label="ops")):
                op = data.draw(operation(model))
                before = state(model)
                rejected: type[StorageError] | None = None
                try:
                    op(model)  # the model never crashes: apply it first
                except StorageError as e:
                    rejected = type(e)
                after = state(model)
                inflight = op if rejected is None else None
                try:
                    op(s)
                except StorageError as e:
                    assert type(e) is rejected
                else:
                    assert rejected is None
                    history.append(op)
                inflight = None
                assert state(s) == after
            s.close()
        except SimulatedCrash:
            pass
        torn = data.draw(st.booleans(), label="torn")
        image = fs.image(torn=random.Random(crash_at) if torn else None)
        got = state(reopen(image))
        if inflight is not None:
            assert got in (before, after)
            if got == after:
                history.append(inflight)
            else:
                model = replay(history)
        assert got == state(model)
