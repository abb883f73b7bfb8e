"""Segmented write-ahead log: record codec, writer, recovery.

On-disk format
==============

The log is a directory of segment files named
``<seq:020d>-<first index:020d>.wal`` (both zero-padded decimal, so names sort
in log order). ``seq`` counts segments from 1 and has no gaps among the
surviving files; ``first index`` is the index the next entry had when the
segment was created (informational). A segment is a sequence of records::

    +--------------+--------------+----------+-----------------+
    | length  u32  | crc32   u32  | type u8  | payload         |
    +--------------+--------------+----------+-----------------+
      little endian, 9-byte fixed header; length = len(payload)

``crc32`` (zlib) covers the length field, the type byte and the payload, so a
flipped length or type is caught like a flipped payload byte. The type's high
bit (``0x80``) marks the last record of a *batch*: the records one ``write``
call made durable together. Recovery applies a batch only when its last
record is intact, so every ``FileStorage.save`` is all-or-nothing.

Record types (payloads little endian):

* ``BASE``     (1) ``u32 version, u64 seq, u64 snap_index, u64 snap_term,
  u64 offset_index, u64 offset_term, u64 term, i64 vote, u64 commit``.
  The first record of every segment, a batch of its own: the state at the
  moment the segment was created (which snapshot is current, where the log
  starts, the hard state). It makes a segment readable without its
  predecessors, so those can be deleted once compacted.
* ``ENTRY``    (2) ``u64 index, u64 term, u8 entry type, data``. An entry
  whose index is at or below the last index replayed so far *replaces*
  everything from that index on (the conflicting suffix a new leader
  overwrote). There is no separate TRUNCATE record: rewrite semantics make a
  truncation and its replacement one atomic batch.
* ``HARD_STATE`` (3) ``u64 term, i64 vote, u64 commit``; the last one wins.
* ``SNAPSHOT`` (4) ``u64 index, u64 term, u8 reset``: the snapshot file
  ``(index, term)`` in the snapshot store is now the current one. ``reset=1``
  (a snapshot installed from the leader) also discards the whole log; the
  log restarts after ``index``. ``reset=0`` (``create_snapshot``) leaves the
  log alone.
* ``COMPACT``  (5) ``u64 index, u64 term``: the log now starts after
  ``index`` (whose term stays as the boundary).

Recovery
========

Segments are replayed in order. Any defect in a segment that is not the last
one, and a CRC-valid record that does not decode, is corruption:
``CorruptLogError`` names the file and byte offset. In the last segment a
defect (short header, length past the end, CRC mismatch, zero fill) is a
*torn tail* — a write that the crash interrupted, never acknowledged — when
no valid record follows it anywhere in the file and it lies beyond the
durable floor the manifest records: the file is truncated back to the end
of the last complete batch, synced, and a warning logged that says why the
dropped bytes were not acknowledged (no end-of-batch record among them) or
how they could have been (the damaged record is marked end-of-batch: the
batch was complete when written, so only a disk losing synced bytes could
have cost an acknowledged write). If a
valid record does follow, the damage is in the middle of the log and
recovery refuses (never silent loss). A torn write that persisted a later
page of the final batch but not an earlier one is therefore reported as
corruption: a false alarm, but a safe one.

Segment rotation and deletion
=============================

Before a batch, if the current segment has reached ``segment_bytes``, a new
one is created: its ``BASE`` written, the file synced and then the directory
synced (a new name is durable only then); then the data dir's manifest is
updated to name it (``raft/manifest.py``), and only then does the segment
take the batch. So a segment a batch was acknowledged from is always named
by the manifest, and open refuses to start without it
(``MissingDurableStateError``); the manifest also records each older
segment's final size and a (lagging) floor of the newest one's durable
bytes, below which a defect is corruption, never a torn tail.
``release(index)`` deletes, oldest first, the segments before the current
one whose live entries are all ``<= index``; it is called only after the
``COMPACT``/``SNAPSHOT`` record that makes them unnecessary is durable, and
the directory is synced after each removal so the surviving segments always
form a gap-free run. Replaying from the first surviving segment may meet a
hole between its ``BASE`` and its first entry (the deleted entries); the
later ``COMPACT`` record closes it, and an unclosed hole is corruption.

All entries are also kept in memory by ``FileStorage`` (snapshots bound the
log), so the WAL is only ever read at open.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from raft.fileio import FileSystem, WritableFile
from raft.manifest import Manifest, MissingDurableStateError, save_manifest
from raft.storage import StorageError
from raft.types import Entry, EntryType, HardState

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CompactMark",
    "CorruptLogError",
    "Record",
    "RecordType",
    "RecoveredLog",
    "SegmentBase",
    "SnapshotMark",
    "Wal",
    "WalState",
    "decode_records",
    "encode_record",
]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
FORMAT_VERSION = 1

HEADER = struct.Struct("<IIB")  # length, crc32, type
_LEN_TYPE = struct.Struct("<IB")
_BASE = struct.Struct("<IQQQQQQqQ")
_ENTRY = struct.Struct("<QQB")
_HARD_STATE = struct.Struct("<QqQ")
_SNAPSHOT = struct.Struct("<QQB")
_COMPACT = struct.Struct("<QQ")

END_OF_BATCH = 0x80
_SEGMENT_RE = re.compile(r"^(\d{20})-(\d{20})\.wal$")


class CorruptLogError(StorageError):
    """The log is damaged where a crash cannot have damaged it: recovering
    would silently lose acknowledged data, so the node must not start.
    ``offset`` is a byte offset in ``path``, or None for a whole file."""

    def __init__(self, path: str, offset: int | None, reason: str) -> None:
        where = "" if offset is None else f" at byte {offset}"
        super().__init__(f"{path}: corrupt WAL{where}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class RecordType(enum.IntEnum):
    BASE = 1
    ENTRY = 2
    HARD_STATE = 3
    SNAPSHOT = 4
    COMPACT = 5


@dataclass(frozen=True, slots=True)
class SegmentBase:
    seq: int
    snap_index: int
    snap_term: int
    offset_index: int
    offset_term: int
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class SnapshotMark:
    index: int
    term: int
    reset: bool


@dataclass(frozen=True, slots=True)
class CompactMark:
    index: int
    term: int


Record = SegmentBase | Entry | HardState | SnapshotMark | CompactMark

_RECORD_TYPES = frozenset(int(t) for t in RecordType)
_ENTRY_TYPE = int(RecordType.ENTRY)
_FRAME_TYPES = frozenset(t | b for t in _RECORD_TYPES for b in (0, END_OF_BATCH))


# -- codec -----------------------------------------------------------------


def _frame(rtype: int, payload: bytes, end_of_batch: bool) -> bytes:
    t = rtype | (END_OF_BATCH if end_of_batch else 0)
    crc = zlib.crc32(payload, zlib.crc32(_LEN_TYPE.pack(len(payload), t)))
    return HEADER.pack(len(payload), crc, t) + payload


def encode_record(rec: Record, end_of_batch: bool = False) -> bytes:
    if isinstance(rec, Entry):
        payload = _ENTRY.pack(rec.index, rec.term, int(rec.type)) + rec.data
        return _frame(RecordType.ENTRY, payload, end_of_batch)
    if isinstance(rec, HardState):
        payload = _HARD_STATE.pack(rec.term, rec.vote, rec.commit)
        return _frame(RecordType.HARD_STATE, payload, end_of_batch)
    if isinstance(rec, SnapshotMark):
        payload = _SNAPSHOT.pack(rec.index, rec.term, int(rec.reset))
        return _frame(RecordType.SNAPSHOT, payload, end_of_batch)
    if isinstance(rec, CompactMark):
        return _frame(RecordType.COMPACT, _COMPACT.pack(rec.index, rec.term), end_of_batch)
    hs = rec.hard_state
    payload = _BASE.pack(
        FORMAT_VERSION,
        rec.seq,
        rec.snap_index,
        rec.snap_term,
        rec.offset_index,
        rec.offset_term,
        hs.term,
        hs.vote,
        hs.commit,
    )
    return _frame(RecordType.BASE, payload, end_of_batch)


def encode_batch(records: Sequence[Record]) -> bytes:
    """Records framed as one batch: the last one carries the end mark."""
    last = len(records) - 1
    parts: list[bytes] = []
    append = parts.append
    crc32 = zlib.crc32
    for i, r in enumerate(records):
        if type(r) is Entry and i != last:
            # The bulk of every batch: encode_record and _frame inlined (this
            # loop runs once per replicated entry on every node).
            payload = _ENTRY.pack(r.index, r.term, r.type) + r.data
            n = len(payload)
            append(HEADER.pack(n, crc32(payload, crc32(_LEN_TYPE.pack(n, _ENTRY_TYPE))),
                               _ENTRY_TYPE))
            append(payload)
        else:
            append(encode_record(r, i == last))
    return b"".join(parts)


class _Malformed(Exception):
    """A CRC-valid record whose payload does not decode."""


def _decode_payload(rtype: int, p: bytes) -> Record:
    if rtype not in _RECORD_TYPES:
        raise _Malformed(f"unknown record type {rtype}")
    try:
        if rtype == RecordType.ENTRY:
            index, term, etype = _ENTRY.unpack_from(p)
            return Entry(index=index, term=term, data=p[_ENTRY.size :], type=EntryType(etype))
        if rtype == RecordType.HARD_STATE and len(p) == _HARD_STATE.size:
            term, vote, commit = _HARD_STATE.unpack(p)
            return HardState(term=term, vote=vote, commit=commit)
        if rtype == RecordType.SNAPSHOT and len(p) == _SNAPSHOT.size:
            index, term, reset = _SNAPSHOT.unpack(p)
            return SnapshotMark(index=index, term=term, reset=bool(reset))
        if rtype == RecordType.COMPACT and len(p) == _COMPACT.size:
            index, term = _COMPACT.unpack(p)
            return CompactMark(index=index, term=term)
        if rtype == RecordType.BASE and len(p) == _BASE.size:
            version, seq, si, st, oi, ot, term, vote, commit = _BASE.unpack(p)
            if version != FORMAT_VERSION:
                raise _Malformed(f"unsupported WAL format version {version}")
            return SegmentBase(seq, si, st, oi, ot, HardState(term=term, vote=vote, commit=commit))
    except (struct.error, ValueError) as e:
        raise _Malformed(f"undecodable {RecordType(rtype).name} record: {e}") from e
    raise _Malformed(f"bad {RecordType(rtype).name} record of {len(p)} bytes")


def _frame_at(data: bytes, pos: int) -> tuple[int, bytes] | str:
    """The (type, payload) of an intact frame at ``pos``, or why there is none."""
    n = len(data)
    if n - pos < HEADER.size:
        return "truncated record header"
    length, crc, t = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if end > n:
        return f"record length {length} runs past the end of the file"
    payload = data[pos + HEADER.size : end]
    if zlib.crc32(payload, zlib.crc32(_LEN_TYPE.pack(length, t))) != crc:
        return "checksum mismatch"
    return t, payload


def _valid_frame_after(data: bytes, start: int) -> int | None:
    """Offset of the first intact frame at or after ``start``, if any. Used to
    tell a torn tail (nothing valid follows) from damage in the middle."""
    n = len(data)
    if data.count(0, start) == n - start:
        return None  # zero fill: the common torn tail, skip the scan
    for pos in range(start, n - HEADER.size + 1):
        if data[pos + 8] in _FRAME_TYPES and not isinstance(_frame_at(data, pos), str):
            return pos
    return None


def decode_records(data: bytes) -> list[tuple[int, Record, bool]]:
    """Decode a byte string of intact records: ``(offset, record, end_of_batch)``.
    Raises ``ValueError`` at the first defect (for tools and tests)."""
    out: list[tuple[int, Record, bool]] = []
    pos = 0
    while pos < len(data):
        fr = _frame_at(data, pos)
        if isinstance(fr, str):
            raise ValueError(f"byte {pos}: {fr}")
        t, payload = fr
        try:
            out.append((pos, _decode_payload(t & ~END_OF_BATCH, payload), bool(t & END_OF_BATCH)))
        except _Malformed as e:
            raise ValueError(f"byte {pos}: {e}") from e
        pos += HEADER.size + len(payload)
    return out


@dataclass(slots=True)
class _Scan:
    batches: list[list[Record]]
    good_length: int


def _dropped(data: bytes, pos: int, batch_start: int, durable: int, source: str) -> str:
    """Why the bytes from ``batch_start`` on, defective at ``pos``, were not
    acknowledged, or why they might have been (for the torn-tail warning)."""
    t = data[pos + 8] if len(data) - pos >= HEADER.size else 0
    if t & END_OF_BATCH and (t & ~END_OF_BATCH) in _RECORD_TYPES:
        # The whole batch was handed to write(); only a disk that loses
        # bytes after fdatasync returned could have cost an acknowledged one.
        how = ("the damaged record is marked end-of-batch: the batch was complete when "
               "written, and was acknowledged only if the disk lost synced bytes")
    else:
        how = ("no end-of-batch record among them: a batch whose write, hence its sync, "
               "never finished, so it was never acknowledged")
    if source:
        return f"{how}; they lie beyond the {durable} bytes {source} records as durable"
    return f"{how}; no durable size is recorded to check against (no manifest)"


def _scan_segment(
    data: bytes, path: str, is_last: bool, durable: int = 0, source: str = ""
) -> _Scan:
    """Split a segment into complete batches; see the module doc for what is a
    torn tail (last segment only) and what is corruption. ``durable``: how many
    leading bytes the manifest ``source`` vouches for (a defect there is
    corruption, never a torn tail)."""
    batches: list[list[Record]] = []
    pending: list[Record] = []
    pos = 0
    batch_start = 0
    while pos < len(data):
        fr = _frame_at(data, pos)
        if isinstance(fr, str):
            if not is_last:
                raise CorruptLogError(path, pos, f"{fr} in a segment that is not the last")
            after = _valid_frame_after(data, pos + 1)
            if after is not None:
                raise CorruptLogError(
                    path, pos, f"{fr}, followed by a valid record at byte {after}"
                )
            if batch_start < durable:
                raise CorruptLogError(
                    path, pos, f"{fr}, within the first {durable} bytes, which {source} "
                    "records as durable: acknowledged writes would be lost"
                )
            log.warning(
                "%s: torn tail at byte %d (%s); dropping %d bytes from byte %d: %s",
                path,
                pos,
                fr,
                len(data) - batch_start,
                batch_start,
                _dropped(data, pos, batch_start, durable, source),
            )
            return _Scan(batches, batch_start)
        t, payload = fr
        try:
            pending.append(_decode_payload(t & ~END_OF_BATCH, payload))
        except _Malformed as e:
            # The checksum matched: this is what was written. Not a crash
            # artefact but a bug or a foreign format; refuse.
            raise CorruptLogError(path, pos, str(e)) from e
        pos += HEADER.size + len(payload)
        if t & END_OF_BATCH:
            batches.append(pending)
            pending = []
            batch_start = pos
    if pending:
        if not is_last:
            raise CorruptLogError(path, batch_start, "incomplete batch at the end of a segment")
        if batch_start < durable:
            raise CorruptLogError(
                path, batch_start, f"incomplete batch within the first {durable} bytes, "
                f"which {source} records as durable: acknowledged writes would be lost"
            )
        log.warning(
            "%s: incomplete batch at byte %d; dropping %d bytes: %s",
            path,
            batch_start,
            len(data) - batch_start,
            # pos == len(data): no damaged record, and the intact ones
            # before it carry no end mark.
            _dropped(data, len(data), batch_start, durable, source),
        )
    return _Scan(batches, batch_start)


# -- replay ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalState:
    """The log state a new segment's ``BASE`` records (the state *before* the
    batch that triggers the rotation)."""

    snap_index: int
    snap_term: int
    offset_index: int
    offset_term: int
    hard_state: HardState
    last_index: int


@dataclass(slots=True)
class RecoveredLog:
    hard_state: HardState
    snap_index: int
    snap_term: int
    #: ``entries[0]`` is the dummy at the log offset (as in ``MemoryStorage``).
    entries: list[Entry]


@dataclass(slots=True)
class _Replay:
    """Replay state. ``run`` is a contiguous list of entries starting at
    ``run_start``; ``run_start > offset + 1`` is a hole (see module doc)."""

    hard_state: HardState = field(default_factory=HardState)
    snap_index: int = 0
    snap_term: int = 0
    offset_index: int = 0
    offset_term: int = 0
    run_start: int = 1
    run: list[Entry] = field(default_factory=list)

    def base(self, b: SegmentBase) -> None:
        self.hard_state = b.hard_state
        self.snap_index, self.snap_term = b.snap_index, b.snap_term
        self.offset_index, self.offset_term = b.offset_index, b.offset_term
        self.run_start, self.run = b.offset_index + 1, []

    def apply(self, rec: Record) -> None:
        if isinstance(rec, Entry):
            self._entry(rec)
        elif isinstance(rec, HardState):
            self.hard_state = rec
        elif isinstance(rec, SnapshotMark):
            self.snap_index, self.snap_term = rec.index, rec.term
            if rec.reset:
                self.offset_index, self.offset_term = rec.index, rec.term
                self.run_start, self.run = rec.index + 1, []
        elif isinstance(rec, CompactMark):
            self.offset_index, self.offset_term = rec.index, rec.term
            if self.run_start <= rec.index:
                del self.run[: rec.index + 1 - self.run_start]
                self.run_start = rec.index + 1
        # A BASE after the first segment restates what replay already knows.

    def _entry(self, e: Entry) -> None:
        if e.index <= self.offset_index:
            return  # covered by the snapshot; the writer never produces this
        end = self.run_start + len(self.run)
        if not self.run or e.index < self.run_start or e.index > end:
            # A new run: the first entry after a BASE, a rewrite reaching below
            # the run, or entries after a hole left by deleted segments.
            self.run_start, self.run = e.index, [e]
        else:
            del self.run[e.index - self.run_start :]
            self.run.append(e)

    def result(self, where: str) -> RecoveredLog:
        if self.run and self.run_start != self.offset_index + 1:
            raise CorruptLogError(
                where,
                None,
                f"entries {self.offset_index + 1}..{self.run_start - 1} are missing "
                "(a segment was lost?)",
            )
        dummy = Entry(index=self.offset_index, term=self.offset_term)
        return RecoveredLog(self.hard_state, self.snap_index, self.snap_term, [dummy, *self.run])


# -- writer ------------------------------------------------------------------


@dataclass(slots=True)
class _Segment:
    seq: int
    path: str
    #: Highest index of a *live* entry in the segment (0 if none): entries
    #: rewritten or discarded later no longer count.
    max_index: int = 0
    #: Final size in bytes once a newer segment exists (0 while current).
    size: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:020d}-{first_index:020d}.wal"


def _note_batch(segments: list[_Segment], records: Sequence[Record]) -> None:
    """Track each segment's highest live entry index for ``release``."""
    cur = segments[-1]
    high = max(s.max_index for s in segments)
    for r in records:
        if isinstance(r, Entry):
            if r.index <= high:
                for s in segments:  # a rewrite kills later entries everywhere
                    s.max_index = min(s.max_index, r.index - 1)
            cur.max_index = high = r.index
        elif isinstance(r, SnapshotMark) and r.reset:
            for s in segments:
                s.max_index = min(s.max_index, r.index)
            high = min(high, r.index)


class _Expected:
    """The checks a manifest enables at open (see ``raft/manifest.py``)."""

    def __init__(
        self, directory: str, source: str, m: Manifest | None, found: list[tuple[int, str]]
    ) -> None:
        self.source = source
        self._m = m if m is not None else Manifest()
        self._newest = int(self._m.newest[:20]) if self._m.newest else 0
        self._sealed = {int(name[:20]): size for name, size in self._m.sealed}
        top = found[-1][0] if found else 0
        if top < self._newest:
            # The manifest names a segment only once it is durable, so it was
            # lost after the fact (or the whole directory's content was).
            path = os.path.join(directory, self._m.newest)
            also = ""
            if top < self._newest - 1:
                also = f" (and segments {top + 1}..{self._newest - 1})"
            raise MissingDurableStateError(
                f"{path} is missing{also}: {source} records it as the newest WAL segment, "
                f"holding entries from {int(self._m.newest[21:41])} on; starting without it "
                "would lose acknowledged writes"
            )
        if m is not None and top > self._newest + 1:
            log.warning("%s: segments up to %d, but %s records %s as the newest",
                        directory, top, source, self._m.newest or "none")

    def size(self, seq: int, path: str, size: int) -> int:
        """Check a segment's size; return how many of its bytes are vouched
        for as durable (0: none, or no manifest)."""
        sealed = self._sealed.get(seq)
        if sealed is not None and size != sealed:
            what = ("it was truncated: acknowledged writes are missing" if size < sealed
                    else "it changed after it was sealed")
            raise MissingDurableStateError(
                f"{path} is {size} bytes, but {self.source} recorded {sealed} bytes "
                f"when the segment was sealed: {what}"
            )
        if seq != self._newest:
            return sealed or 0
        floor = self._m.newest_durable
        if size < floor:
            raise MissingDurableStateError(
                f"{path} is {size} bytes, but {self.source} records its first {floor} bytes "
                "as durable: it was truncated, acknowledged writes are missing"
            )
        return floor


class Wal:
    """The writer side of a WAL directory; ``open`` also recovers it."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        segments: list[_Segment],
        current: WritableFile | None,
        size: int,
        *,
        segment_bytes: int,
        fsync: bool,
        manifest_path: str | None = None,
        recorded: Manifest | None = None,
    ) -> None:
        self._fs = fs
        self._dir = directory
        self._segments = segments
        self._file = current
        self._size = size
        #: Bytes of the current segment known durable (all, with fsync off).
        self._durable = size
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._next_seq = segments[-1].seq + 1 if segments else 1
        self._unsynced = False
        self._manifest_path = manifest_path
        #: What the manifest file holds now (None: no file yet).
        self._recorded = recorded

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        directory: str,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        manifest_path: str | None = None,
        expect: Manifest | None = None,
    ) -> tuple[Wal, RecoveredLog]:
        """Recover the log in ``directory`` (created if missing), repairing a
        torn tail, and return a writer positioned after the last good batch.

        With ``manifest_path`` the writer keeps that manifest current
        (``raft/manifest.py``), and writes it before returning if it differs
        from ``expect``, the manifest found there (None: none). Whatever
        ``expect`` vouches for must be present: else
        ``MissingDurableStateError`` (a file or bytes are gone) or
        ``CorruptLogError`` (damage below the durable floor). Raises
        ``OSError`` on I/O errors."""
        fs.makedirs(directory)
        found: list[tuple[int, str]] = []
        for name in fs.listdir(directory):
            m = _SEGMENT_RE.match(name)
            if m:
                found.append((int(m.group(1)), name))
            elif name.endswith(".wal"):
                log.warning("%s: ignoring file with unexpected name %s", directory, name)
        found.sort()
        for (a, na), (b, nb) in itertools.pairwise(found):
            if b != a + 1:
                raise CorruptLogError(
                    os.path.join(directory, nb), None,
                    f"segments {a + 1}..{b - 1} missing after {na}",
                )
        check = _Expected(directory, manifest_path or "the manifest", expect, found)
        replay = _Replay()
        segments: list[_Segment] = []
        current: WritableFile | None = None
        size = prev_length = 0
        for i, (seq, name) in enumerate(found):
            path = os.path.join(directory, name)
            is_last = i == len(found) - 1
            data = fs.read(path)
            durable = check.size(seq, path, len(data))
            scan = _scan_segment(data, path, is_last, durable, check.source if durable else "")
            if scan.batches:
                first = scan.batches[0][0]
                if not isinstance(first, SegmentBase) or first.seq != seq:
                    raise CorruptLogError(path, 0, "segment does not start with its BASE record")
                if not segments:
                    replay.base(first)
            elif not is_last:
                # A segment is synced before its name is; empty and followed
                # by others, it lost its content after the fact.
                raise CorruptLogError(path, 0, "empty segment followed by others")
            seg = _Segment(seq, path, size=len(data))
            segments.append(seg)
            for batch in scan.batches:
                for rec in batch:
                    replay.apply(rec)
                _note_batch(segments, batch)
            if not is_last:
                prev_length = len(data)
                continue
            if scan.good_length == 0:
                # Only a torn BASE: the segment never held anything durable.
                fs.remove(path)
                if fsync:
                    fs.fsync_dir(directory)
                segments.pop()
                if segments:
                    current = fs.open_append(segments[-1].path)
                    size = prev_length
            else:
                current = fs.open_append(path)
                size = scan.good_length
                if scan.good_length < len(data):
                    # Cut the torn tail before appending, and make the cut
                    # durable: new records must never sit after garbage.
                    current.truncate(scan.good_length)
                    current.sync()
        if current is not None:
            segments[-1].size = 0  # current again (only sealed ones keep a size)
        wal = cls(fs, directory, segments, current, size, segment_bytes=segment_bytes,
                  fsync=fsync, manifest_path=manifest_path, recorded=expect)
        recovered = replay.result(directory)
        if manifest_path is not None and wal.manifest() != expect:
            # What was read may still sit in the page cache only (the process
            # was killed before its sync): make it durable before vouching.
            if current is not None and fsync:
                current.sync()
            wal.record()
        return wal, recovered

    @property
    def segment_paths(self) -> list[str]:
        return [s.path for s in self._segments]

    def manifest(self) -> Manifest:
        """What the manifest should say now: the newest segment with its
        durable bytes, the final sizes of the older live ones."""
        if not self._segments:
            return Manifest()
        *older, cur = self._segments
        return Manifest(cur.name, self._durable, tuple((s.name, s.size) for s in older))

    def record(self) -> None:
        """Rewrite the manifest if it changed (write_atomic: two fsyncs).
        Never on the hot path: at rotation, after snapshots and compactions,
        at open and close. Raises ``OSError``."""
        if self._manifest_path is None:
            return
        m = self.manifest()
        if m != self._recorded:
            save_manifest(self._fs, self._manifest_path, m, fsync=self._fsync)
            self._recorded = m

    def write(self, records: Sequence[Record], state: WalState, *, sync: bool = True) -> None:
        """Append ``records`` as one batch with one write and, unless
        ``sync=False``, one sync. ``state`` is the log state before the batch
        (for a rotation's BASE). With ``sync=False`` the batch is durable only
        after a later ``sync()`` (or a later synced write: a sync covers every
        byte written to the file before it)."""
        if not records:
            return
        if self._file is None or self._size >= self._segment_bytes:
            self._rotate(state)
        assert self._file is not None
        buf = encode_batch(records)
        self._file.write(buf)
        if self._fsync and sync:
            self._file.sync()
        self._size += len(buf)
        self._unsynced = self._fsync and not sync
        if not self._unsynced:
            self._durable = self._size
        _note_batch(self._segments, records)

    def _rotate(self, state: WalState) -> None:
        """Start a new segment: its BASE record and its name durable, then the
        manifest naming it, and only then (back in ``write``) its first batch:
        once a batch may be acknowledged from it, its loss is detectable."""
        # Whatever the old segment holds unsynced must be durable before a
        # newer segment can be: recovery trusts every non-last segment.
        self.sync()
        seq = self._next_seq
        base = SegmentBase(
            seq,
            state.snap_index,
            state.snap_term,
            state.offset_index,
            state.offset_term,
            state.hard_state,
        )
        buf = encode_record(base, end_of_batch=True)
        path = os.path.join(self._dir, segment_name(seq, state.last_index + 1))
        f = self._fs.open_append(path)
        try:
            f.write(buf)
            if self._fsync:
                f.sync()
                # The new file's name is durable only once the directory
                # is; until then a crash could lose the whole segment.
                self._fs.fsync_dir(self._dir)
        except BaseException:
            f.close()
            raise
        if self._file is not None:
            self._file.close()
            self._segments[-1].size = self._size
        self._file = f
        self._size = self._durable = len(buf)
        self._segments.append(_Segment(seq, path))
        self._next_seq = seq + 1
        self.record()

    @property
    def needs_sync(self) -> bool:
        return self._unsynced

    def sync(self) -> None:
        """Make every batch written so far durable (one fdatasync).

        Safe to run in another thread while the caller does not write: it
        touches only the file descriptor and two fields the writer reads
        only while it does not wait for us."""
        if self._unsynced and self._file is not None:
            self._file.sync()
        self._unsynced = False
        self._durable = self._size

    def release(self, index: int) -> list[str]:
        """Delete, oldest first, segments before the current one whose live
        entries are all ``<= index``. Call only once the record that makes
        them redundant (COMPACT or SNAPSHOT reset) is durable."""
        removed: list[str] = []
        while len(self._segments) > 1 and self._segments[0].max_index <= index:
            seg = self._segments[0]
            self._fs.remove(seg.path)
            if self._fsync:
                # One at a time, so the survivors are always a gap-free run.
                self._fs.fsync_dir(self._dir)
            self._segments.pop(0)
            removed.append(seg.path)
        return removed

    def close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
