"""Snapshot files: format, validation, atomic write, recovery choices."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import pytest

from raft.file_storage import FileStorage
from raft.fileio import OsFileSystem
from raft.membership import Membership
from raft.snapshot_store import (
    CorruptSnapshotError,
    SnapshotStore,
    decode_snapshot,
    encode_snapshot,
    snapshot_name,
)
from raft.types import Entry, Snapshot, SnapshotMeta
from tests.raft.crashfs import CrashingFileSystem


def snap(index: int = 7, term: int = 3, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, Membership.of({0, 2, 5})), data)


@pytest.mark.parametrize(
    "s",
    [snap(), snap(data=b""), snap(data=bytes(range(256)) * 1000), Snapshot(SnapshotMeta(1, 1))],
)
def test_round_trip(s: Snapshot) -> None:
    assert decode_snapshot(encode_snapshot(s)) == s


def test_layout() -> None:
    s = Snapshot(SnapshotMeta(7, 3, Membership.of({0, 2}, {5}, {0: "h:1", 2: "h:2", 5: "h:5"})),
                 b"state")
    raw = encode_snapshot(s)
    magic, version, _crc, index, term, mlen, dlen = struct.unpack_from("<8sIIQQIQ", raw)
    assert (magic, version, index, term, dlen) == (b"PRKVSNAP", 2, 7, 3, 5)
    assert Membership.decode(raw[44 : 44 + mlen]) == s.meta.membership
    assert raw[44 + mlen :] == b"state"


def test_version_1_files_are_read() -> None:
    """Files of 0.4 and before held the voter ids where the membership is now."""
    body = struct.pack("<QQIQ", 7, 3, 3, 5) + struct.pack("<3q", 0, 2, 5) + b"state"
    raw = struct.pack("<8sII", b"PRKVSNAP", 1, zlib.crc32(body)) + body
    assert decode_snapshot(raw) == Snapshot(SnapshotMeta(7, 3, Membership.of({0, 2, 5})), b"state")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:30], "truncated"),
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:8] + struct.pack("<I", 9) + b[12:], "version"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum"),
        (lambda b: b[:-1], "checksum"),
        (lambda b: b + b"\x00", "checksum"),
    ],
)
def test_corruption_is_detected(mutate: object, message: str) -> None:
    raw = encode_snapshot(snap())
    with pytest.raises(CorruptSnapshotError, match=message):
        decode_snapshot(mutate(raw))  # type: ignore[operator]


def test_save_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    store = SnapshotStore(OsFileSystem(), str(tmp_path))
    store.save(snap())
    assert [p.name for p in tmp_path.iterdir()] == [snapshot_name(7, 3)]
    assert store.load(7, 3) == snap()
    assert store.list() == [(7, 3)]


def test_save_order_write_sync_rename_sync_dir() -> None:
    fs = CrashingFileSystem()
    store = SnapshotStore(fs, "/s")
    store.save(snap())
    ops = [t.split()[0] for t in fs.trace]
    assert ops == ["create", "truncate", "write", "sync", "rename", "fsync_dir"]


def test_load_checks_name_against_header(tmp_path: Path) -> None:
    store = SnapshotStore(OsFileSystem(), str(tmp_path))
    store.save(snap())
    (tmp_path / snapshot_name(7, 3)).rename(tmp_path / snapshot_name(8, 3))
    with pytest.raises(CorruptSnapshotError, match="does not match"):
        store.load(8, 3)
    with pytest.raises(CorruptSnapshotError, match="missing"):
        store.load(7, 3)


# -- through FileStorage -------------------------------------------------------------


def build(d: Path) -> None:
    with FileStorage(d) as s:
        s.save(None, [Entry(i, 1, b"e") for i in range(1, 11)])
        s.create_snapshot(4, b"sm4", Membership.of({1}))
        s.create_snapshot(8, b"sm8", Membership.of({1}))


def test_older_snapshots_are_removed_after_the_new_one_is_named(tmp_path: Path) -> None:
    build(tmp_path)
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [snapshot_name(8, 1)]


def test_temp_files_are_removed_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build(tmp_path)
    tmp = tmp_path / "snap" / (snapshot_name(9, 1) + ".tmp")
    tmp.write_bytes(b"half a snapsh")
    with caplog.at_level(logging.WARNING), FileStorage(tmp_path) as s:
        assert s.snapshot().meta.index == 8
    assert not tmp.exists()
    assert "half-written" in caplog.text


def test_unnamed_newer_snapshot_is_ignored(tmp_path: Path) -> None:
    """A snapshot file written durably, but the crash came before the WAL
    record naming it: the operation did not happen."""
    build(tmp_path)
    SnapshotStore(OsFileSystem(), str(tmp_path / "snap")).save(snap(index=9, term=1))
    with FileStorage(tmp_path) as s:
        assert s.snapshot().meta.index == 8
    assert not (tmp_path / "snap" / snapshot_name(9, 1)).exists()


def test_corrupt_current_snapshot_falls_back_to_an_older_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FileStorage(tmp_path) as s:
        s.save(None, [Entry(i, 1, b"e") for i in range(1, 11)])
        s.create_snapshot(4, b"sm4", Membership.of({1}))
    # Keep the snapshot at 4 (as a crash before its cleanup would), then
    # take one at 8 and damage it.
    keep = (tmp_path / "snap" / snapshot_name(4, 1)).read_bytes()
    with FileStorage(tmp_path) as s:
        s.create_snapshot(8, b"sm8", Membership.of({1}))
    (tmp_path / "snap" / snapshot_name(4, 1)).write_bytes(keep)
    bad = tmp_path / "snap" / snapshot_name(8, 1)
    bad.write_bytes(bad.read_bytes()[:-2])
    with caplog.at_level(logging.WARNING), FileStorage(tmp_path) as s:
        assert s.snapshot().meta.index == 4
        assert s.snapshot().data == b"sm4"
        assert s.first_index() == 1  # the log still covers everything
    assert "falling back to snapshot 4" in caplog.text


def test_corrupt_snapshot_without_fallback_is_an_error(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.save(None, [Entry(i, 1, b"e") for i in range(1, 11)])
        s.create_snapshot(8, b"sm8", Membership.of({1}))
        s.compact(8)
    bad = tmp_path / "snap" / snapshot_name(8, 1)
    raw = bytearray(bad.read_bytes())
    raw[50] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        FileStorage(tmp_path)
    bad.unlink()
    with pytest.raises(CorruptSnapshotError, match="missing"):
        FileStorage(tmp_path)
