"""Durable state cannot silently shrink: what MANIFEST vouches for must be
there at open, else a one-line ``MissingDurableStateError`` naming it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from raft.file_storage import (
    CorruptLogError,
    CorruptManifestError,
    FileStorage,
    MissingDurableStateError,
)
from raft.fileio import OsFileSystem
from raft.manifest import Manifest, load_manifest
from raft.types import Entry, HardState
from raft.wal import decode_records
from tests.raft.crashfs import CrashingFileSystem, materialize

SEG = 300


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, bytes([i % 256]) * 20) for i in range(lo, hi + 1)]


def segments(d: Path) -> list[Path]:
    return sorted((d / "wal").glob("*.wal"))


def write_log(d: Path, n: int = 30) -> None:
    """``n`` entries, one synced batch each, over several segments; closed
    cleanly (so the newest segment's whole length is vouched for)."""
    with FileStorage(d, segment_bytes=SEG) as s:
        for i in range(1, n + 1):
            s.save(HardState(1, 0, i - 1), ents(i, i))
    assert len(segments(d)) >= 4


def refused(d: Path) -> str:
    with pytest.raises(MissingDurableStateError) as ei:
        FileStorage(d, segment_bytes=SEG)
    text = str(ei.value)
    assert "\n" not in text
    return text


def manifest(d: Path) -> Manifest:
    m = load_manifest(OsFileSystem(), str(d / "MANIFEST"))
    assert m is not None
    return m


# -- what is missing ---------------------------------------------------------------


def test_deleting_the_newest_segment_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path)
    newest = segments(tmp_path)[-1]
    first = int(newest.stem.split("-")[1])
    newest.unlink()
    assert refused(tmp_path) == (
        f"{newest} is missing: {tmp_path}/MANIFEST records it as the newest WAL segment, "
        f"holding entries from {first} on; starting without it would lose acknowledged writes"
    )


def test_deleting_the_two_newest_segments_names_both(tmp_path: Path) -> None:
    write_log(tmp_path)
    *_, before, newest = segments(tmp_path)
    seq = int(newest.stem.split("-")[0])
    before.unlink()
    newest.unlink()
    assert refused(tmp_path).startswith(
        f"{newest} is missing (and segments {seq - 1}..{seq - 1}): {tmp_path}/MANIFEST records"
    )


def test_deleting_every_segment_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path)
    newest = segments(tmp_path)[-1]
    for p in segments(tmp_path):
        p.unlink()
    assert refused(tmp_path).startswith(f"{newest} is missing (and segments 1..")


def test_deleting_wal_dir_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path)
    newest = segments(tmp_path)[-1]
    shutil.rmtree(tmp_path / "wal")
    assert refused(tmp_path) == (
        f"{tmp_path}/wal is missing: {tmp_path}/MANIFEST records {newest.name} as the newest "
        "WAL segment; starting with an empty log would lose acknowledged writes"
    )
    assert not (tmp_path / "wal").exists()  # refused before recreating anything


def test_deleting_wal_dir_of_an_old_format_dir_is_refused(tmp_path: Path) -> None:
    """No manifest (previous release): LOCK still shows the dir was used."""
    write_log(tmp_path)
    (tmp_path / "MANIFEST").unlink()
    shutil.rmtree(tmp_path / "wal")
    assert refused(tmp_path) == (
        f"{tmp_path}/wal is missing, but {tmp_path}/LOCK shows the data dir was used before; "
        "starting with an empty log would lose acknowledged writes "
        "(if no node ever ran here, delete the data dir)"
    )
    (tmp_path / "LOCK").unlink()
    assert refused(tmp_path).startswith(f"{tmp_path}/wal is missing, but {tmp_path}/snap/ shows")


def test_truncating_an_older_segment_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path)
    seg = segments(tmp_path)[1]
    data = seg.read_bytes()
    cut = decode_records(data)[-1][0]  # at a record boundary: no damage to see
    seg.write_bytes(data[:cut])
    assert refused(tmp_path) == (
        f"{seg} is {cut} bytes, but {tmp_path}/MANIFEST recorded {len(data)} bytes when the "
        "segment was sealed: it was truncated: acknowledged writes are missing"
    )


def test_truncating_the_newest_segment_below_the_floor_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path)
    seg = segments(tmp_path)[-1]
    data = seg.read_bytes()
    assert manifest(tmp_path).newest_durable == len(data)  # a clean close vouches for all
    cut = decode_records(data)[-2][0]  # drop the last batch (entry + hard state) whole
    seg.write_bytes(data[:cut])
    assert refused(tmp_path) == (
        f"{seg} is {cut} bytes, but {tmp_path}/MANIFEST records its first {len(data)} bytes "
        "as durable: it was truncated, acknowledged writes are missing"
    )


def test_damage_below_the_floor_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    write_log(tmp_path)
    seg = segments(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    start = decode_records(bytes(data))[-2][0]
    data[start:] = bytes(len(data) - start)  # zeroed, as a torn write would leave it
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="records as durable: acknowledged writes"):
        FileStorage(tmp_path)
    assert seg.read_bytes() == bytes(data)  # nothing was "repaired"


def test_damaged_manifest_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path)
    m = tmp_path / "MANIFEST"
    m.write_bytes(m.read_bytes().replace(b"newest 0", b"newest 1"))
    with pytest.raises(CorruptManifestError) as ei:
        FileStorage(tmp_path)
    assert str(ei.value).startswith(f"{m} is damaged (checksum mismatch); ")


# -- what still opens --------------------------------------------------------------


def test_fresh_dir_opens_and_gets_a_manifest(tmp_path: Path) -> None:
    d = tmp_path / "new"
    with FileStorage(d) as s:
        assert s.last_index() == 0
    assert manifest(d) == Manifest()
    with FileStorage(d) as s:
        s.save(None, ents(1, 2))
    assert manifest(d).newest == segments(d)[0].name


def test_old_format_dir_opens_and_gets_a_manifest(tmp_path: Path) -> None:
    write_log(tmp_path)
    (tmp_path / "MANIFEST").unlink()
    with FileStorage(tmp_path, segment_bytes=SEG) as s:
        assert s.entries(1, 31) == [e for i in range(1, 31) for e in ents(i, i)]
    m = manifest(tmp_path)
    segs = segments(tmp_path)
    assert m.newest == segs[-1].name and m.newest_durable == segs[-1].stat().st_size
    assert m.sealed == tuple((p.name, p.stat().st_size) for p in segs[:-1])
    segs[-1].unlink()  # and from now on a loss is detected
    refused(tmp_path)


def test_leftover_manifest_temporary_is_removed(tmp_path: Path) -> None:
    write_log(tmp_path)
    (tmp_path / "MANIFEST.tmp").write_bytes(b"half")
    FileStorage(tmp_path).close()
    assert not (tmp_path / "MANIFEST.tmp").exists()


def test_manifest_lags_by_design_and_is_not_on_the_hot_path(tmp_path: Path) -> None:
    """Saves that do not rotate leave the manifest alone (its floor lags);
    a crash then loses nothing the manifest vouched for."""
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs, segment_bytes=1 << 20)
    s.save(None, ents(1, 1))
    recorded, n = fs.image()["/d/MANIFEST"], len(fs.trace)
    for i in range(2, 50):
        s.save(HardState(1, 0, i - 1), ents(i, i))
    assert fs.image()["/d/MANIFEST"] == recorded
    assert not [t for t in fs.trace[n:] if "MANIFEST" in t]
    root = tmp_path / "crash"
    materialize(fs.image(), root)
    with FileStorage(root / "d") as after:
        assert after.last_index() == 49


# -- torn tails: recovered as before, with a warning that says why ----------------


def crashed_with_tail(tmp_path: Path, tail: bytes | None, cut: int = 0) -> tuple[Path, Path]:
    """A crash image (real files) of a storage that saved 10 synced batches,
    with ``tail`` appended to its segment or ``cut`` bytes cut off it."""
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs)
    for i in range(1, 11):
        s.save(HardState(1, 0, i - 1), ents(i, i))
    image = fs.image()
    (path,) = [p for p in image if p.endswith(".wal")]
    image[path] = image[path][: len(image[path]) - cut] + (tail or b"")
    root = tmp_path / "crash"
    materialize(image, root)
    return root / "d", root / path.lstrip("/")


def test_torn_tail_beyond_the_durable_point_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d, seg = crashed_with_tail(tmp_path, bytes(100))
    size = seg.stat().st_size
    floor = manifest(d).newest_durable
    with caplog.at_level(logging.WARNING), FileStorage(d) as s:
        assert s.last_index() == 10
    (warning,) = [r.getMessage() for r in caplog.records if "torn tail" in r.getMessage()]
    assert "no end-of-batch record among them" in warning
    assert "never acknowledged" in warning
    assert f"beyond the {floor} bytes {d}/MANIFEST records as durable" in warning
    assert seg.stat().st_size == size - 100  # cut back; the next open is clean
    caplog.clear()
    with caplog.at_level(logging.WARNING), FileStorage(d) as s:
        assert s.last_index() == 10
    assert not caplog.records


def test_torn_final_record_says_its_batch_was_complete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last record's header (end-of-batch mark) survived, its payload's
    last byte did not: the whole batch had been written, so only a disk
    losing synced bytes could have cost an acknowledged write; say so."""
    d, _ = crashed_with_tail(tmp_path, None, cut=1)
    with caplog.at_level(logging.WARNING), FileStorage(d) as s:
        assert s.last_index() == 9
    assert "marked end-of-batch" in caplog.text
    assert "acknowledged only if the disk lost synced bytes" in caplog.text


def test_torn_tail_in_an_old_format_dir_says_nothing_is_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d, _ = crashed_with_tail(tmp_path, bytes(30))
    (d / "MANIFEST").unlink()
    with caplog.at_level(logging.WARNING), FileStorage(d) as s:
        assert s.last_index() == 10
    assert "no durable size is recorded to check against" in caplog.text
