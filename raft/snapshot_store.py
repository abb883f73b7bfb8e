"""Snapshot files: atomic write, validation, listing.

On-disk format
==============

One file per snapshot, ``<index:020d>-<term:020d>.snap`` in the snapshot
directory; everything little endian::

    offset  size  field
    0       8     magic  b"PRKVSNAP"
    8       4     u32 format version (2)
    12      4     u32 crc32 of every byte after this field
    16      8     u64 index
    24      8     u64 term
    32      4     u32 membership length M
    36      8     u64 data length D
    44      M     the membership (``Membership.encode``)
    44+M    D     application data

Version 1, still read, had a voter count P at offset 32 and P i64 voter ids
in place of the membership.

A file is valid when its magic, version, checksum and total length agree and
its index and term match its name.

Writing is the classic atomic replace: write ``<name>.tmp``, fsync it, rename
it over ``<name>``, fsync the directory. A crash leaves either no file or a
complete one (plus perhaps a stray ``.tmp``, which ``remove_temporaries``
cleans up). Which snapshot is *current* is not decided here but by the WAL's
``SNAPSHOT`` record (see ``raft/wal.py``): a file is written first, named in
the WAL second, and older files are deleted only after that, so at every
instant a crash leaves the current snapshot on disk.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib

from raft.fileio import TMP_SUFFIX, FileSystem, write_atomic
from raft.membership import Membership
from raft.storage import StorageError
from raft.types import Snapshot, SnapshotMeta

__all__ = ["CorruptSnapshotError", "SnapshotStore", "decode_snapshot", "encode_snapshot"]

log = logging.getLogger(__name__)

MAGIC = b"PRKVSNAP"
VERSION = 2
_HEAD = struct.Struct("<8sII")  # magic, version, crc
_BODY = struct.Struct("<QQIQ")  # index, term, membership length (v1: voter count), data length
_NAME_RE = re.compile(r"^(\d{20})-(\d{20})\.snap$")


class CorruptSnapshotError(StorageError):
    """A snapshot file is missing or fails validation."""


def snapshot_name(index: int, term: int) -> str:
    return f"{index:020d}-{term:020d}.snap"


def encode_snapshot(snap: Snapshot) -> bytes:
    membership = snap.meta.membership.encode()
    body = (
        _BODY.pack(snap.meta.index, snap.meta.term, len(membership), len(snap.data))
        + membership
        + snap.data
    )
    return _HEAD.pack(MAGIC, VERSION, zlib.crc32(body)) + body


def decode_snapshot(data: bytes, where: str = "snapshot") -> Snapshot:
    """Parse and validate a snapshot file; ``CorruptSnapshotError`` if bad."""
    if len(data) < _HEAD.size + _BODY.size:
        raise CorruptSnapshotError(f"{where}: truncated ({len(data)} bytes)")
    magic, version, crc = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorruptSnapshotError(f"{where}: not a snapshot file (bad magic)")
    if version not in (1, VERSION):
        raise CorruptSnapshotError(f"{where}: unsupported snapshot version {version}")
    if zlib.crc32(memoryview(data)[_HEAD.size :]) != crc:
        raise CorruptSnapshotError(f"{where}: checksum mismatch")
    index, term, count, dlen = _BODY.unpack_from(data, _HEAD.size)
    start = _HEAD.size + _BODY.size
    mlen = count if version == VERSION else 8 * count
    if len(data) != start + mlen + dlen:
        raise CorruptSnapshotError(f"{where}: length does not match header")
    if version == VERSION:
        try:
            membership = Membership.decode(bytes(data[start : start + mlen]))
        except ValueError as e:
            raise CorruptSnapshotError(f"{where}: {e}") from None
    else:
        membership = Membership.of(struct.unpack_from(f"<{count}q", data, start))
    meta = SnapshotMeta(index=index, term=term, membership=membership)
    return Snapshot(meta=meta, data=bytes(data[start + mlen :]))


class SnapshotStore:
    """A directory of snapshot files."""

    def __init__(self, fs: FileSystem, directory: str, *, fsync: bool = True) -> None:
        self._fs = fs
        self._dir = directory
        self._fsync = fsync
        fs.makedirs(directory)

    def path(self, index: int, term: int) -> str:
        return os.path.join(self._dir, snapshot_name(index, term))

    def remove_temporaries(self) -> None:
        """Delete half-written files left by a crash during ``save``."""
        for name in self._fs.listdir(self._dir):
            if name.endswith(TMP_SUFFIX):
                log.warning("%s: removing half-written snapshot %s", self._dir, name)
                self._fs.remove(os.path.join(self._dir, name))

    def list(self) -> list[tuple[int, int]]:
        """``(index, term)`` of every snapshot file by name, oldest first
        (not validated; see ``load``)."""
        out = []
        for name in self._fs.listdir(self._dir):
            m = _NAME_RE.match(name)
            if m:
                out.append((int(m.group(1)), int(m.group(2))))
        return sorted(out)

    def save(self, snap: Snapshot) -> None:
        """Write ``snap`` durably (temp file, fsync, rename, fsync dir)."""
        path = self.path(snap.meta.index, snap.meta.term)
        write_atomic(self._fs, path, encode_snapshot(snap), fsync=self._fsync)

    def load(self, index: int, term: int) -> Snapshot:
        path = self.path(index, term)
        try:
            data = self._fs.read(path)
        except FileNotFoundError as e:
            raise CorruptSnapshotError(f"{path}: missing") from e
        snap = decode_snapshot(data, path)
        if (snap.meta.index, snap.meta.term) != (index, term):
            raise CorruptSnapshotError(f"{path}: header does not match the file name")
        return snap

    def remove(self, index: int, term: int) -> None:
        # No directory fsync: a removal that a crash undoes leaves an unused
        # file, which the next open deletes again.
        self._fs.remove(self.path(index, term))
