"""``MemoryKvStore``: the ``KvStore`` (``kvserver.kv_store``) in dicts, the LMDB
store's in-memory twin for the simulator and unit tests.

MemoryKvStore copy file
=======================

``copy_to`` writes (``write_atomic``; all integers little endian)::

    offset  size  field
    0       8     magic b"PRKVSTOR"
    8       4     u32 format version (1)
    12      4     u32 crc32 of every byte after this field
    16      8     u64 number of data pairs D
    24      8     u64 number of sessions S
    32      8     u64 number of meta values M
    40      ...   D data pairs, keys ascending: u32 key length, u32 value length, key, value
                  S sessions, ids ascending: u64 client id, u32 length, data
                  M meta values, names ascending: u32 name length, u32 value length,
                  name (UTF-8), value

A file is valid when magic, version and checksum agree and the records fill
it exactly; ``replace_with`` loads it (``StoreFormatError`` otherwise) and
removes it.
"""

from __future__ import annotations

import bisect
import itertools
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from types import TracebackType

from kvserver.kv_store import (
    KvStoreError,
    StoreFormatError,
    WriteBatch,
    check_key,
    check_scan,
    fill_page,
    meta_key,
    session_key,
)
from raft.fileio import FileSystem, OsFileSystem, write_atomic

__all__ = ["MemoryKvStore"]


class _SortedKeys:
    """Distinct keys in order, as a list of sorted blocks of at most
    ``2 * _LOAD`` keys (the sortedcontainers layout): add and remove move
    O(_LOAD) pointers instead of O(n)."""

    _LOAD = 512

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        ordered = sorted(keys)
        load = self._LOAD
        self._blocks = [ordered[i:i + load] for i in range(0, len(ordered), load)]
        self._maxes = [b[-1] for b in self._blocks]

    def add(self, key: bytes) -> None:
        """Insert ``key`` (not present)."""
        blocks, maxes = self._blocks, self._maxes
        if not blocks:
            blocks.append([key])
            maxes.append(key)
            return
        i = bisect.bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            block = blocks[i]
            block.append(key)
            maxes[i] = key
        else:
            block = blocks[i]
            bisect.insort(block, key)
        if len(block) > 2 * self._LOAD:
            half = len(block) // 2
            blocks[i:i + 1] = [block[:half], block[half:]]
            maxes[i:i + 1] = [block[half - 1], block[-1]]

    def remove(self, key: bytes) -> None:
        """Remove ``key`` (present)."""
        blocks, maxes = self._blocks, self._maxes
        i = bisect.bisect_left(maxes, key)
        block = blocks[i]
        j = bisect.bisect_left(block, key)
        del block[j]
        if not block:
            del blocks[i]
            del maxes[i]
        elif j == len(block):
            maxes[i] = block[-1]

    def iter_from(self, start: bytes) -> Iterator[bytes]:
        """Keys ``>= start`` in order (the set must not change meanwhile)."""
        blocks = self._blocks
        i = bisect.bisect_left(self._maxes, start)
        if i == len(blocks):
            return iter(())
        block = blocks[i]
        first = itertools.islice(block, bisect.bisect_left(block, start), None)
        rest = itertools.chain.from_iterable(itertools.islice(blocks, i + 1, None))
        return itertools.chain(first, rest)


_MAGIC = b"PRKVSTOR"
_VERSION = 1
_HEAD = struct.Struct("<8sII")
_COUNTS = struct.Struct("<QQQ")
_PAIR = struct.Struct("<II")
_SESSION = struct.Struct("<QI")


def _encode_copy(data: dict[bytes, bytes], sessions: dict[int, bytes],
                 meta: dict[str, bytes]) -> bytes:
    out = bytearray(_HEAD.size)
    out += _COUNTS.pack(len(data), len(sessions), len(meta))
    pair, sess = _PAIR.pack, _SESSION.pack
    for key in sorted(data):
        value = data[key]
        out += pair(len(key), len(value))
        out += key
        out += value
    for cid in sorted(sessions):
        blob = sessions[cid]
        out += sess(cid, len(blob))
        out += blob
    for name in sorted(meta):
        raw, value = name.encode(), meta[name]
        out += pair(len(raw), len(value))
        out += raw
        out += value
    _HEAD.pack_into(out, 0, _MAGIC, _VERSION, zlib.crc32(memoryview(out)[_HEAD.size:]))
    return bytes(out)


def _decode_copy(blob: bytes, where: str
                 ) -> tuple[dict[bytes, bytes], dict[int, bytes], dict[str, bytes]]:
    if len(blob) < _HEAD.size + _COUNTS.size:
        raise StoreFormatError(f"{where}: truncated ({len(blob)} bytes)")
    magic, version, crc = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise StoreFormatError(f"{where}: not a store copy (bad magic)")
    if version != _VERSION:
        raise StoreFormatError(f"{where}: format version {version}, this code reads {_VERSION}")
    view = memoryview(blob)
    if zlib.crc32(view[_HEAD.size:]) != crc:
        raise StoreFormatError(f"{where}: checksum mismatch")
    n_data, n_sessions, n_meta = _COUNTS.unpack_from(blob, _HEAD.size)
    pos = _HEAD.size + _COUNTS.size
    pair, sess = _PAIR.unpack_from, _SESSION.unpack_from
    data: dict[bytes, bytes] = {}
    sessions: dict[int, bytes] = {}
    meta: dict[str, bytes] = {}
    try:
        for _ in range(n_data):
            klen, vlen = pair(blob, pos)
            pos += 8
            data[blob[pos:pos + klen]] = blob[pos + klen:pos + klen + vlen]
            pos += klen + vlen
        for _ in range(n_sessions):
            cid, vlen = sess(blob, pos)
            pos += 12
            sessions[cid] = blob[pos:pos + vlen]
            pos += vlen
        for _ in range(n_meta):
            klen, vlen = pair(blob, pos)
            pos += 8
            meta[blob[pos:pos + klen].decode()] = blob[pos + klen:pos + klen + vlen]
            pos += klen + vlen
    except (struct.error, UnicodeDecodeError) as e:
        raise StoreFormatError(f"{where}: malformed records: {e}") from e
    if pos != len(blob):
        raise StoreFormatError(f"{where}: records end at {pos}, file has {len(blob)} bytes")
    return data, sessions, meta


class _MemoryWriteBatch:
    """Writes go to overlays, merged into the store on commit."""

    __slots__ = ("_data", "_meta", "_open", "_sessions", "_store")

    def __init__(self, store: MemoryKvStore) -> None:
        self._store = store
        self._open = False
        self._data: dict[bytes, bytes | None] = {}
        self._sessions: dict[int, bytes | None] = {}
        self._meta: dict[str, bytes] = {}

    def __enter__(self) -> _MemoryWriteBatch:
        self._store._begin_write()
        self._open = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        was_open, self._open = self._open, False
        try:
            if was_open and exc_type is None:
                self._store._commit(self._data, self._sessions, self._meta)
        finally:
            if was_open:
                self._store._writing = False

    def _live(self) -> None:
        if not self._open:
            raise KvStoreError("write batch used outside its with block")

    def get(self, key: bytes) -> bytes | None:
        self._live()
        if key in self._data:
            return self._data[key]
        return self._store._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._live()
        check_key(key)
        self._data[key] = value

    def delete(self, key: bytes) -> bool:
        existed = self.get(key) is not None
        if existed:
            self._data[key] = None
        return existed

    def put_session(self, client_id: int, data: bytes) -> None:
        self._live()
        session_key(client_id)
        self._sessions[client_id] = data

    def delete_session(self, client_id: int) -> None:
        self._live()
        session_key(client_id)
        self._sessions[client_id] = None

    def set_meta(self, name: str, value: bytes) -> None:
        self._live()
        meta_key(name)
        self._meta[name] = value


class MemoryKvStore:
    """``KvStore`` in memory, with the LMDB store's semantics (its copy file
    format is in the module docstring). ``size_bytes`` counts the bytes of
    keys, values, session ids (8) and data, and meta names and values: no
    per-entry overhead, so it reads lower than the LMDB store's pages.
    ``fsync`` applies to ``copy_to`` and ``replace_with``."""

    def __init__(self, *, fsync: bool = True) -> None:
        self._fs: FileSystem = OsFileSystem()
        self._fsync = fsync
        self._data: dict[bytes, bytes] = {}
        self._keys = _SortedKeys()
        self._sessions: dict[int, bytes] = {}
        self._meta: dict[str, bytes] = {}
        self._size = 0
        self._writing = False
        self._closed = False
        # A commit on the loop against a copy_to in a worker.
        self._lock = threading.Lock()

    def _check_open(self) -> None:
        if self._closed:
            raise KvStoreError("store is closed")

    # -- reads --

    def get(self, key: bytes) -> bytes | None:
        self._check_open()
        return self._data.get(key)

    def scan(self, start: bytes, end: bytes | None, limit: int, max_bytes: int,
             *, overhead: int = 0) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        self._check_open()
        check_scan(limit)
        data = self._data
        items = ((key, data[key]) for key in self._keys.iter_from(start))
        return fill_page([], 0, items, end, limit, max_bytes, overhead)

    def key_count(self) -> int:
        self._check_open()
        return len(self._data)

    def get_meta(self, name: str) -> bytes | None:
        self._check_open()
        meta_key(name)
        return self._meta.get(name)

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        self._check_open()
        return iter(sorted(self._sessions.items()))

    def size_bytes(self) -> int:
        self._check_open()
        return self._size

    # -- writes --

    def write(self) -> WriteBatch:
        self._check_open()
        return _MemoryWriteBatch(self)

    def _begin_write(self) -> None:
        self._check_open()
        if self._writing:
            raise KvStoreError("a write batch is already open")
        self._writing = True

    def _commit(self, data: dict[bytes, bytes | None], sessions: dict[int, bytes | None],
                meta: dict[str, bytes]) -> None:
        with self._lock:
            size = self._size
            base, keys = self._data, self._keys
            for key, value in data.items():
                old = base.get(key)
                if old is not None:
                    size -= len(key) + len(old)
                if value is None:
                    if old is not None:
                        del base[key]
                        keys.remove(key)
                else:
                    if old is None:
                        keys.add(key)
                    base[key] = value
                    size += len(key) + len(value)
            for cid, blob in sessions.items():
                old = self._sessions.pop(cid, None)
                if old is not None:
                    size -= 8 + len(old)
                if blob is not None:
                    self._sessions[cid] = blob
                    size += 8 + len(blob)
            for name, value in meta.items():
                old = self._meta.get(name)
                if old is not None:
                    size -= len(name.encode()) + len(old)
                self._meta[name] = value
                size += len(name.encode()) + len(value)
            self._size = size

    # -- durability and snapshots --

    def sync(self) -> None:
        self._check_open()

    def copy_to(self, path: str) -> int:
        with self._lock:
            self._check_open()
            data, sessions, meta = dict(self._data), dict(self._sessions), dict(self._meta)
        blob = _encode_copy(data, sessions, meta)
        write_atomic(self._fs, path, blob, fsync=self._fsync)
        return len(blob)

    def replace_with(self, path: str) -> None:
        self._check_open()
        if self._writing:
            raise KvStoreError("replace_with() inside a write batch")
        data, sessions, meta = _decode_copy(self._fs.read(path), path)
        size = (sum(len(k) + len(v) for k, v in data.items())
                + sum(8 + len(v) for v in sessions.values())
                + sum(len(k.encode()) + len(v) for k, v in meta.items()))
        keys = _SortedKeys(data)
        with self._lock:
            self._data, self._keys, self._sessions, self._meta = data, keys, sessions, meta
            self._size = size
        self._fs.remove(path)
        if self._fsync:
            self._fs.fsync_dir(os.path.dirname(path) or ".")

    def close(self) -> None:
        self._closed = True
