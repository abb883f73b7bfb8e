"""WAL record codec, torn-tail repair, corruption detection, segments."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import pytest

from raft.file_storage import FileStorage
from raft.fileio import OsFileSystem
from raft.membership import Membership
from raft.types import Entry, EntryType, HardState
from raft.wal import (
    END_OF_BATCH,
    HEADER,
    CompactMark,
    CorruptLogError,
    Record,
    RecordType,
    SegmentBase,
    SnapshotMark,
    Wal,
    decode_records,
    encode_batch,
    encode_record,
)
from tests.raft.crashfs import CrashingFileSystem


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(index=i, term=term, data=bytes([i % 256]) * size) for i in range(lo, hi + 1)]


def segments(d: Path) -> list[Path]:
    return sorted((d / "wal").glob("*.wal"))


def make_log(d: Path, batches: int, per_batch: int = 1, segment_bytes: int = 1 << 20) -> None:
    with FileStorage(d, segment_bytes=segment_bytes, fsync=False) as s:
        for b in range(batches):
            lo = b * per_batch + 1
            s.save(HardState(term=1, commit=lo - 1), ents(lo, lo + per_batch - 1))


def forget_manifest(d: Path) -> None:
    """Make ``d`` a data dir as written before manifests: the WAL's own
    checks must catch what they can without one (the manifest would catch
    the damage below first; see test_durable_state.py)."""
    (d / "MANIFEST").unlink()


def reopen_log(d: Path) -> list[Entry]:
    with FileStorage(d) as s:
        return s.entries(s.first_index(), s.last_index() + 1)


# -- codec --------------------------------------------------------------------


RECORDS: list[Record] = [
    Entry(index=7, term=3, data=b"hello"),
    Entry(index=8, term=3, data=b"", type=EntryType.NOOP),
    HardState(term=5, vote=-1, commit=4),
    HardState(term=5, vote=2, commit=2**40),
    SnapshotMark(index=100, term=4, reset=True),
    SnapshotMark(index=101, term=4, reset=False),
    CompactMark(index=99, term=4),
    SegmentBase(3, 100, 4, 99, 4, HardState(term=5, vote=1, commit=100)),
]


def test_codec_round_trip() -> None:
    data = encode_batch(RECORDS)
    decoded = decode_records(data)
    assert [r for _, r, _ in decoded] == RECORDS
    assert [end for _, _, end in decoded] == [False] * (len(RECORDS) - 1) + [True]
    assert decoded[0][0] == 0
    assert decoded[1][0] == HEADER.size + 17 + 5


def test_header_layout() -> None:
    """length u32 | crc32 u32 | type u8, little endian; the crc covers the
    length, the type and the payload."""
    rec = encode_record(HardState(term=1, vote=2, commit=3), end_of_batch=True)
    length, crc, t = struct.unpack_from("<IIB", rec)
    payload = rec[9:]
    assert length == len(payload) == 24
    assert t == RecordType.HARD_STATE | END_OF_BATCH
    assert crc == zlib.crc32(payload, zlib.crc32(struct.pack("<IB", length, t)))


@pytest.mark.parametrize("pos", [0, 4, 8, 9, 20])
def test_any_flipped_byte_is_detected(pos: int) -> None:
    rec = bytearray(encode_record(Entry(index=1, term=1, data=b"x" * 20)))
    rec[pos] ^= 0x01
    with pytest.raises(ValueError):
        decode_records(bytes(rec))


# -- torn tails -----------------------------------------------------------------


def test_truncation_at_every_byte_of_the_last_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    make_log(src, batches=5)
    (seg,) = segments(src)
    data = seg.read_bytes()
    last_start = decode_records(data)[-2][0]  # last batch = ENTRY + HARD_STATE
    assert decode_records(data)[-2][1] == ents(5, 5)[0]
    for cut in range(last_start, len(data) + 1):
        d = tmp_path / f"cut{cut}"
        (d / "wal").mkdir(parents=True)
        (d / "wal" / seg.name).write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = reopen_log(d)
        if cut == len(data):
            assert got == ents(1, 5)
            assert not caplog.records
        else:
            # Exactly the intact prefix; the torn batch vanishes whole.
            assert got == ents(1, 4), cut
            assert (d / "wal" / seg.name).stat().st_size == last_start
            if cut > last_start:
                assert "torn tail" in caplog.text or "incomplete batch" in caplog.text


def test_torn_multi_record_batch_is_all_or_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_log(src, batches=3, per_batch=4)
    (seg,) = segments(src)
    data = seg.read_bytes()
    starts = [off for off, _, _ in decode_records(data)]
    batch_start = starts[-5]  # 4 entries + hard state
    for cut in starts[-4:]:  # whole records of the last batch survive, but no end mark
        d = tmp_path / f"cut{cut}"
        (d / "wal").mkdir(parents=True)
        (d / "wal" / seg.name).write_bytes(data[:cut])
        with FileStorage(d) as s:
            assert s.last_index() == 8
            assert s.hard_state == HardState(term=1, commit=4)
        assert (d / "wal" / seg.name).stat().st_size == batch_start


@pytest.mark.parametrize("tail", [bytes(4096), bytes(3), b"\x00" * 9 + b"\x00" * 100])
def test_zero_filled_tail_is_truncated(tmp_path: Path, tail: bytes) -> None:
    make_log(tmp_path, batches=4)
    (seg,) = segments(tmp_path)
    size = seg.stat().st_size
    seg.write_bytes(seg.read_bytes() + tail)
    assert reopen_log(tmp_path) == ents(1, 4)
    assert seg.stat().st_size == size
    # And appending afterwards works and survives.
    with FileStorage(tmp_path) as s:
        s.save(None, ents(5, 5))
    assert reopen_log(tmp_path) == ents(1, 5)


def test_garbage_tail_without_valid_records_is_truncated(tmp_path: Path) -> None:
    make_log(tmp_path, batches=4)
    (seg,) = segments(tmp_path)
    seg.write_bytes(seg.read_bytes() + b"\xde\xad\xbe\xef" * 50)
    assert reopen_log(tmp_path) == ents(1, 4)


def test_torn_tail_write_is_durable(tmp_path: Path) -> None:
    """The truncation is synced before anything is appended after it."""
    fs = CrashingFileSystem()
    with FileStorage("/d", fs=fs) as s:
        s.save(None, ents(1, 3))
    image = fs.image()
    (path,) = [p for p in image if p.endswith(".wal")]
    image[path] += bytes(50)
    fs2 = CrashingFileSystem(image)
    FileStorage("/d", fs=fs2).close()
    on_wal = [t for t in fs2.trace if path in t]
    assert on_wal[:2] == [f"truncate {path} {len(image[path]) - 50}", f"sync {path}"]


# -- corruption -------------------------------------------------------------------


def test_corruption_in_the_middle_is_an_error(tmp_path: Path) -> None:
    make_log(tmp_path, batches=6)
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    offsets = [off for off, r, _ in decode_records(bytes(data)) if isinstance(r, Entry)]
    bad = offsets[2]  # entry 3, followed by valid records
    data[bad + HEADER.size + 3] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as ei:
        FileStorage(tmp_path)
    assert ei.value.path == str(seg)
    assert ei.value.offset == bad
    assert str(seg) in str(ei.value) and f"byte {bad}" in str(ei.value)
    assert seg.read_bytes() == bytes(data)  # nothing was "repaired"


def test_bad_length_in_the_middle_is_an_error(tmp_path: Path) -> None:
    make_log(tmp_path, batches=6)
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    bad = [off for off, r, _ in decode_records(bytes(data)) if isinstance(r, Entry)][1]
    struct.pack_into("<I", data, bad, 10_000_000)  # length runs past the end
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="followed by a valid record"):
        FileStorage(tmp_path)


def test_corruption_at_the_end_of_a_non_last_segment_is_an_error(tmp_path: Path) -> None:
    make_log(tmp_path, batches=20, segment_bytes=200)
    segs = segments(tmp_path)
    assert len(segs) > 3
    data = segs[1].read_bytes()
    segs[1].write_bytes(data[:-1])  # as if torn; but a later segment exists
    forget_manifest(tmp_path)
    with pytest.raises(CorruptLogError) as ei:
        FileStorage(tmp_path)
    assert ei.value.path == str(segs[1])


def test_valid_checksum_but_undecodable_record_is_an_error(tmp_path: Path) -> None:
    make_log(tmp_path, batches=2)
    (seg,) = segments(tmp_path)
    bogus = struct.pack("<QQB", 3, 1, 77)  # entry type 77 does not exist
    t = RecordType.ENTRY | END_OF_BATCH
    crc = zlib.crc32(bogus, zlib.crc32(struct.pack("<IB", len(bogus), t)))
    seg.write_bytes(seg.read_bytes() + HEADER.pack(len(bogus), crc, t) + bogus)
    with pytest.raises(CorruptLogError, match="undecodable ENTRY"):
        FileStorage(tmp_path)


def test_missing_middle_segment_is_an_error(tmp_path: Path) -> None:
    make_log(tmp_path, batches=20, segment_bytes=200)
    segs = segments(tmp_path)
    segs[2].unlink()
    with pytest.raises(CorruptLogError, match="missing"):
        FileStorage(tmp_path)


def test_empty_middle_segment_is_an_error(tmp_path: Path) -> None:
    make_log(tmp_path, batches=20, segment_bytes=200)
    segments(tmp_path)[0].write_bytes(b"")
    forget_manifest(tmp_path)
    with pytest.raises(CorruptLogError, match="empty segment"):
        FileStorage(tmp_path)


def test_lost_first_segment_is_an_error(tmp_path: Path) -> None:
    """Entries 1..k gone without a compaction that covers them."""
    make_log(tmp_path, batches=20, segment_bytes=200)
    segments(tmp_path)[0].unlink()
    with pytest.raises(CorruptLogError, match=r"entries 1\.\.[0-9]+ are missing"):
        FileStorage(tmp_path)


def test_segment_without_base_is_an_error(tmp_path: Path) -> None:
    make_log(tmp_path, batches=3)
    (seg,) = segments(tmp_path)
    recs = decode_records(seg.read_bytes())
    seg.write_bytes(seg.read_bytes()[recs[1][0] :])  # drop the BASE
    forget_manifest(tmp_path)
    with pytest.raises(CorruptLogError, match="BASE"):
        FileStorage(tmp_path)


# -- segments ---------------------------------------------------------------------


def test_rotation_names_and_bases(tmp_path: Path) -> None:
    make_log(tmp_path, batches=30, segment_bytes=300)
    segs = segments(tmp_path)
    assert len(segs) >= 5
    for i, seg in enumerate(segs, start=1):
        seq, first = seg.stem.split("-")
        assert len(seq) == len(first) == 20
        assert int(seq) == i
        recs = decode_records(seg.read_bytes())
        assert isinstance(recs[0][1], SegmentBase) and recs[0][1].seq == i and recs[0][2]
        first_entry = next(r for _, r, _ in recs if isinstance(r, Entry))
        assert first_entry.index == int(first)
    assert reopen_log(tmp_path) == ents(1, 30)


def test_rotation_syncs_file_then_directory() -> None:
    fs = CrashingFileSystem()
    s = FileStorage("/d", fs=fs, segment_bytes=300)
    s.save(None, ents(1, 8))  # BASE + 8 entries: 365 bytes, the segment is full
    n = len(fs.trace)
    s.save(None, ents(6, 6))  # segment is full: rotate
    assert [t.split()[0] for t in fs.trace[n:]] == [
        "create", "write", "sync", "fsync_dir",  # the new one, with its BASE
        "create", "truncate", "write", "sync", "rename", "fsync_dir",  # MANIFEST
        "write", "sync",  # the batch
    ]  # fmt: skip
    n = len(fs.trace)
    s.save(HardState(term=2), ents(7, 7))  # group commit: one write, one sync
    assert [t.split()[0] for t in fs.trace[n:]] == ["write", "sync"]


def test_compaction_deletes_only_wholly_compacted_segments(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes=200) as s:
        for i in range(1, 41):
            s.save(None, ents(i, i, size=40))
        before = segments(tmp_path)
        s.create_snapshot(25, b"sm", Membership.of({1}))
        s.compact(25)
        after = segments(tmp_path)
        assert len(after) < len(before)
        assert before[-1] in after
        # Every remaining segment but the first holds entries > 25 only...
        first_entries = [
            next((r.index for _, r, _ in decode_records(p.read_bytes()) if isinstance(r, Entry)), 0)
            for p in after
        ]
        assert first_entries[0] <= 26
        # ...and every deleted one held entries <= 25 only.
        for p in before:
            if p not in after:
                assert int(p.stem.split("-")[1]) <= 25
    with FileStorage(tmp_path) as s:
        assert s.first_index() == 26
        assert s.entries(26, 41) == [e for i in range(26, 41) for e in ents(i, i, size=40)]


def test_install_snapshot_deletes_old_segments(tmp_path: Path) -> None:
    from raft.types import Snapshot, SnapshotMeta

    with FileStorage(tmp_path, segment_bytes=200) as s:
        for i in range(1, 21):
            s.save(None, ents(i, i, size=40))
        assert len(segments(tmp_path)) > 3
        s.save(None, [], Snapshot(SnapshotMeta(100, 5, Membership.of({1})), b"x"))
        assert len(segments(tmp_path)) == 1
    with FileStorage(tmp_path) as s:
        assert s.first_index() == 101


def test_torn_base_segment_is_removed_and_its_number_reused(tmp_path: Path) -> None:
    make_log(tmp_path, batches=10, segment_bytes=200)
    segs = segments(tmp_path)
    nxt = segs[-1].parent / f"{len(segs) + 1:020d}-{99:020d}.wal"
    nxt.write_bytes(b"\x05\x00")  # a crash right after creating the next segment
    assert reopen_log(tmp_path) == ents(1, 10)
    assert not nxt.exists()
    with FileStorage(tmp_path, segment_bytes=200) as s:
        for i in range(11, 20):
            s.save(None, ents(i, i))
    assert reopen_log(tmp_path) == ents(1, 19)
    assert [int(p.stem.split("-")[0]) for p in segments(tmp_path)] == list(
        range(1, len(segments(tmp_path)) + 1)
    )


def test_wal_open_on_empty_directory(tmp_path: Path) -> None:
    wal, rec = Wal.open(OsFileSystem(), str(tmp_path / "wal"))
    assert rec.entries == [Entry(0, 0)]
    assert rec.hard_state == HardState()
    assert wal.segment_paths == []
    wal.close()


@pytest.mark.parametrize("tail", ["entry", "hard_state", "snapshot_mark"])
def test_batch_encoding_equals_record_by_record(tail: str) -> None:
    """encode_batch inlines the entry case (the hot path); it must frame
    exactly as encode_record does, end-of-batch mark on the last record only."""
    records: list[Record] = [
        Entry(index=i, term=2, data=b"v" * i, type=EntryType.NORMAL) for i in range(1, 6)
    ]
    records.append(Entry(index=6, term=2, data=b"", type=EntryType.NOOP))
    records.append({
        "entry": Entry(index=7, term=3, data=b"last"),
        "hard_state": HardState(term=3, vote=1, commit=5),
        "snapshot_mark": SnapshotMark(index=4, term=2, reset=False),
    }[tail])
    expected = b"".join(encode_record(r, i == len(records) - 1) for i, r in enumerate(records))
    assert encode_batch(records) == expected
