"""``LmdbKvStore``: the ``KvStore`` (``kvserver.kv_store``) in an LMDB file.

LmdbKvStore on disk
===================

The store owns its directory::

    kv.mdb          the LMDB environment (subdir=False: one file, so
                    replace_with swaps the whole store with one rename)
    kv.mdb-lock     LMDB's reader table; reset by LMDB whenever a process
                    opens the environment alone, which the next file ensures
    kv.flock        flock held while the store is open: one process at a time
    kv.unsynced     present while commits may not be durable (below)
    *.tmp           left by a crash in copy_to or write_atomic; removed at open

Inside ``kv.mdb``: named databases ``data``, ``sessions`` (key: client id as
8 bytes big endian, so they list in id order) and ``meta`` (key: the name in
UTF-8). LMDB cannot store an empty key, so the value of the data key ``b""``
lives in ``meta`` under the reserved key ``b"\\x00"`` (names may not contain
NUL).

Flags, and what a crash does
----------------------------

Opened with ``sync=False, metasync=False`` (MDB_NOSYNC; MDB_NOMETASYNC is
then implied: LMDB writes the meta page through its plain descriptor whenever
MDB_NOSYNC is set), no ``writemap``, ``lock=True``. A commit ``pwrite``s the
transaction's new pages and then its meta page into the OS page cache and
returns; nothing is fsynced per transaction. The Raft WAL is the durability
point; the store is made durable by ``sync()`` (``env.sync(True)``, one
fdatasync of the file), which the node calls before it compacts the log.

* Process crash (``kill -9``, an exception, OOM kill): nothing committed is
  lost. Every committed page is in the kernel's page cache, which outlives
  the process; a transaction not yet committed never reached the meta page
  and is invisible. LMDB's reader slots of the dead process are reclaimed
  when the environment is next opened alone.
* Power loss or OS crash: commits since the last ``sync()`` may be lost,
  *and the file may be corrupt*. The kernel writes dirty pages back in any
  order, and LMDB (copy-on-write, two meta pages) reuses a freed page as
  soon as no reader can see a tree holding it (with no long reader: two
  commits later), so a meta page can reach the disk before the pages it
  points to, or a page of the last synced tree can be overwritten by a
  later, unsynced transaction. LMDB documents this:
  MDB_NOSYNC keeps integrity only on a file system that preserves write
  order, which ext4/xfs do not promise for overwrites.
* ``sync()`` guarantees: every transaction committed before the call is
  durable when it returns, and stays so if no write follows before the power
  loss. After a later write it does not: the next unsynced commits may
  overwrite the synced tree's free-listed pages (the second point).

So a power loss must not go unnoticed: ``kv.unsynced`` records that commits
may be unsynced. It is written durably (``write_atomic``: one fsync of the
marker and one of the directory) before the first write batch after an open
or a ``sync()`` that found no write in progress, and removed by such a
``sync()``, by ``close()`` and by ``replace_with``. It holds the kernel's
boot id (``/proc/sys/kernel/random/boot_id``). At open, a marker from the
current boot means the last owner died with unsynced commits still in the
page cache: the store is fine (open syncs it and removes the marker). A
marker from another boot (or from a platform without a boot id) means the
machine went down with unsynced commits: the file may be corrupt, and
``LmdbKvStore(...)`` raises ``StoreDamagedError`` (or, with
``discard_damaged=True``, deletes it and opens an empty store). The caller
then restores a snapshot (``replace_with``) and replays its log from that
snapshot's applied index; the node therefore must keep its log back to a
snapshot it can restore, not merely back to the last ``sync()``. A busy
node is nearly always "unsynced", so after a power loss expect this path.

With ``fsync=False`` (tests, tmpfs): no fsync anywhere and no marker; a power
loss can leave anything.

``writemap`` is off. Measured loading 1M random keys in batches of 64 puts,
it halves the cost of a batch (~570 -> ~260 us), but it is unsafe here: a
write through the map into a sparse file on a full disk is a SIGBUS that
kills the node, where a ``pwrite`` returns ENOSPC (raised as ``OSError``);
it exposes the file to stray writes; and LMDB's integrity caveat above gets
worse (MDB_NOSYNC with MDB_WRITEMAP gives the kernel no write ordering at
all).

Reads reuse one read transaction until the next commit drops it (a get at
1M keys: ~1.7 us; a fresh transaction per get would add ~1 us).

Map size: LMDB maps a fixed range of address space (``map_size``, default
1 GiB; virtual: without writemap the file grows only as pages are written,
it is not preallocated). A write never fails for lack of map space: when
LMDB reports MapFullError the batch is rolled back, the map doubled and the
batch's operations replayed (each batch records them), transparently to the
caller; and after a commit that leaves the map over 3/4 used the map is
doubled ahead of time when no ``copy_to``/``sync`` is running (growing has to
wait for one). Only a real I/O failure (ENOSPC, EIO, EDQUOT, ...) raises, as
``OSError``; the batch is then rolled back.

Snapshots: ``copy_to`` writes a compacting copy (``env.copy(compact=True)``:
a walk of one read transaction, free pages left out, no writer lock taken)
to ``path.tmp``, fsyncs it, renames it to ``path`` and fsyncs the directory.
``replace_with`` checks the file is a store copy (opens it read-only: O(1)),
closes the environment, fsyncs the file, renames it over ``kv.mdb``, fsyncs
the directory and reopens: a crash leaves the old store or the new one. It
consumes ``path``, which must be on the same file system (e.g. in the store's
directory, named ``*.tmp`` until complete so a crash cleans it up).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from types import TracebackType

import lmdb

from kvserver.kv_store import (
    MAX_KEY_BYTES,
    KvStoreError,
    StoreDamagedError,
    StoreFormatError,
    WriteBatch,
    check_key,
    check_scan,
    fill_page,
    meta_key,
    session_key,
)
from raft.fileio import TMP_SUFFIX, FileLock, FileSystem, OsFileSystem, write_atomic

__all__ = [
    "DEFAULT_MAP_SIZE",
    "LmdbKvStore",
]

log = logging.getLogger(__name__)

#: Initial LMDB map size in bytes (address space, not disk; grown by doubling).
DEFAULT_MAP_SIZE = 1 << 30

DATA_FILE = "kv.mdb"
OWNER_LOCK_FILE = "kv.flock"
UNSYNCED_MARKER = "kv.unsynced"

_MAX_DBS = 4
_MAX_READERS = 126
# LMDB writes two meta pages ahead of the trees.
_NUM_METAS = 2
# The data db cannot hold b"": its value lives in meta under this name.
_EMPTY_KEY_META = b"\x00"


def _os_error(e: lmdb.Error, where: str) -> Exception:
    """An LMDB error as ``OSError`` when it carries an errno (LMDB's own
    codes are negative), else unchanged."""
    code = getattr(e, "code", 0)
    if isinstance(code, int) and code > 0:
        return OSError(code, f"{os.strerror(code)} ({e})", where)
    return e


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip().decode() or None
    except OSError:
        return None


_PUT, _DELETE, _PUT_SESSION, _DELETE_SESSION, _SET_META = range(5)


class _LmdbWriteBatch:
    """A write transaction that records its operations, so that it can be
    replayed in a fresh transaction after the map has been grown."""

    __slots__ = ("_entered", "_ops", "_store", "_txn")

    def __init__(self, store: LmdbKvStore) -> None:
        self._store = store
        self._entered = False
        self._txn: lmdb.Transaction[bytes] | None = None
        self._ops: list[tuple[int, bytes, bytes]] = []

    def __enter__(self) -> _LmdbWriteBatch:
        if self._entered:
            raise KvStoreError("a write batch is entered once")
        self._txn = self._store._begin_write()
        self._entered = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        committed = False
        try:
            txn = self._txn
            if txn is None:  # a failed regrow already ended it
                return
            if exc_type is not None:
                txn.abort()
                return
            while True:
                try:
                    txn.commit()
                    committed = True
                    return
                except lmdb.MapFullError:
                    txn = self._regrow(txn)
                except lmdb.Error as e:
                    raise _os_error(e, self._store.path) from e
        finally:
            self._txn = None
            self._ops = []
            self._store._end_write(committed=committed)

    def _live(self) -> lmdb.Transaction[bytes]:
        if self._txn is None:
            raise KvStoreError("write batch used outside its with block")
        return self._txn

    def _apply(self, txn: lmdb.Transaction[bytes], op: int, key: bytes, value: bytes) -> bool:
        s = self._store
        if op == _PUT:
            if key:
                txn.put(key, value, db=s._data)
            else:
                txn.put(_EMPTY_KEY_META, value, db=s._meta)
            return True
        if op == _DELETE:
            if key:
                return txn.delete(key, db=s._data)
            return txn.delete(_EMPTY_KEY_META, db=s._meta)
        if op == _PUT_SESSION:
            txn.put(key, value, db=s._sessions)
        elif op == _DELETE_SESSION:
            return txn.delete(key, db=s._sessions)
        else:
            txn.put(key, value, db=s._meta)
        return True

    def _do(self, op: int, key: bytes, value: bytes = b"") -> bool:
        txn = self._live()
        while True:
            try:
                result = self._apply(txn, op, key, value)
                break
            except lmdb.MapFullError:
                txn = self._regrow(txn)
            except lmdb.Error as e:
                raise _os_error(e, self._store.path) from e
        self._ops.append((op, key, value))
        return result

    def _regrow(self, txn: lmdb.Transaction[bytes]) -> lmdb.Transaction[bytes]:
        """Roll back, double the map, replay the recorded operations in a new
        transaction (as many doublings as it takes)."""
        store = self._store
        while True:
            with contextlib.suppress(lmdb.Error):  # already ended by a failed commit
                txn.abort()
            self._txn = None
            store._grow()
            txn = self._txn = store._env_or_raise().begin(write=True)
            try:
                for op, key, value in self._ops:
                    self._apply(txn, op, key, value)
                return txn
            except lmdb.MapFullError:
                continue
            except lmdb.Error as e:
                raise _os_error(e, store.path) from e

    def get(self, key: bytes) -> bytes | None:
        txn = self._live()
        if not key:
            return txn.get(_EMPTY_KEY_META, db=self._store._meta)
        if len(key) > MAX_KEY_BYTES:
            return None
        return txn.get(key, db=self._store._data)

    def put(self, key: bytes, value: bytes) -> None:
        check_key(key)
        self._do(_PUT, key, value)

    def delete(self, key: bytes) -> bool:
        if len(key) > MAX_KEY_BYTES:
            self._live()
            return False
        return self._do(_DELETE, key)

    def put_session(self, client_id: int, data: bytes) -> None:
        self._do(_PUT_SESSION, session_key(client_id), data)

    def delete_session(self, client_id: int) -> None:
        self._do(_DELETE_SESSION, session_key(client_id))

    def set_meta(self, name: str, value: bytes) -> None:
        self._do(_SET_META, meta_key(name), value)


class LmdbKvStore:
    """``KvStore`` in an LMDB environment in ``directory`` (module docstring).

    ``map_size``: initial map size in bytes (grown by doubling as needed).
    ``fsync``: False skips every fsync (tests on tmpfs). ``discard_damaged``:
    delete a store that ``StoreDamagedError`` would refuse and open empty.
    Raises ``StoreDamagedError``; ``BlockingIOError`` when another open store
    (this process or another) holds the directory; ``OSError``.
    """

    _data: lmdb._Database
    _sessions: lmdb._Database
    _meta: lmdb._Database

    def __init__(self, directory: str, *, map_size: int = DEFAULT_MAP_SIZE,
                 fsync: bool = True, discard_damaged: bool = False) -> None:
        self._dir = directory
        self.path = os.path.join(directory, DATA_FILE)
        self._marker = os.path.join(directory, UNSYNCED_MARKER)
        self._fs: FileSystem = OsFileSystem()
        self._fsync = fsync
        self._map_size = max(map_size, 1 << 20)
        self._psize = 4096
        self._env: lmdb.Environment | None = None
        self._rtxn: lmdb.Transaction[bytes] | None = None
        # Held by sync/copy_to (worker) and by map growth, replace_with and
        # close (loop): the environment is not remapped or closed under a copy.
        self._bg_lock = threading.Lock()
        # Guards the unsynced-marker state between the loop's batches and a
        # worker's sync.
        self._state_lock = threading.Lock()
        self._writing = False
        self._writes = 0  # bumped at the start and end of every batch
        self._marked = False
        self._boot = _boot_id()
        self._fs.makedirs(directory)
        self._owner: FileLock | None = self._fs.lock(os.path.join(directory, OWNER_LOCK_FILE))
        try:
            self._remove_temporaries()
            self._check_marker(discard_damaged)
            try:
                self._open_env()
            except StoreDamagedError as e:
                if not discard_damaged:
                    raise
                log.warning("%s; discarding it, the store opens empty", e)
                self._discard_files()
                self._open_env()
            if fsync:
                # Durable from here: commits a dead owner left in the page
                # cache, or the creation of a new store.
                self._sync_env()
                if self._fs.exists(self._marker):
                    self._fs.remove(self._marker)
        except BaseException:
            self._close_env()
            self._owner.release()
            self._owner = None
            raise

    # -- open and close --

    def _remove_temporaries(self) -> None:
        for name in self._fs.listdir(self._dir):
            if name.endswith(TMP_SUFFIX):
                log.warning("%s: removing %s, left by an interrupted write", self._dir, name)
                self._fs.remove(os.path.join(self._dir, name))

    def _check_marker(self, discard_damaged: bool) -> None:
        if not self._fs.exists(self._marker):
            return
        marked_boot = self._fs.read(self._marker).decode(errors="replace").strip()
        if self._boot is not None and marked_boot == self._boot:
            return  # the owner died; the kernel still has every commit
        if not self._fs.exists(self.path):
            self._fs.remove(self._marker)
            return
        why = (f"{self.path}: may be corrupt: the machine went down (boot "
               f"{marked_boot or '?'}, now {self._boot or '?'}) with commits that were "
               "never synced")
        if not discard_damaged:
            raise StoreDamagedError(why)
        log.warning("%s; discarding it, the store opens empty", why)
        self._discard_files()

    def _discard_files(self) -> None:
        for name in (DATA_FILE, DATA_FILE + "-lock", UNSYNCED_MARKER):
            path = os.path.join(self._dir, name)
            if self._fs.exists(path):
                self._fs.remove(path)
        if self._fsync:
            self._fs.fsync_dir(self._dir)

    def _open_env(self) -> None:
        try:
            env = lmdb.open(self.path, map_size=self._map_size, subdir=False,
                            sync=False, metasync=False, writemap=False, lock=True,
                            max_readers=_MAX_READERS, max_dbs=_MAX_DBS)
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError) as e:
            raise StoreDamagedError(f"{self.path}: not a readable LMDB file: {e}") from e
        except lmdb.Error as e:
            raise _os_error(e, self.path) from e
        try:
            if env.max_key_size() < MAX_KEY_BYTES:
                raise KvStoreError(f"this LMDB build allows keys of only "
                                   f"{env.max_key_size()} bytes, not {MAX_KEY_BYTES}")
            self._data = env.open_db(b"data")
            self._sessions = env.open_db(b"sessions")
            self._meta = env.open_db(b"meta")
        except lmdb.Error as e:
            env.close()
            raise _os_error(e, self.path) from e
        except BaseException:
            env.close()
            raise
        self._env = env
        self._psize = env.stat()["psize"]
        # LMDB raises the map to cover a larger file by itself.
        self._map_size = max(self._map_size, env.info()["map_size"])
        if self._nearly_full():
            self._grow(locked=True)  # nothing else runs yet, or the caller holds the lock

    def _close_env(self) -> None:
        self._drop_reader()
        env, self._env = self._env, None
        if env is not None:
            env.close()

    def close(self) -> None:
        if self._owner is None:
            return
        if self._writing:
            raise KvStoreError("close() inside a write batch")
        with self._bg_lock:
            try:
                if self._fsync and self._env is not None:
                    self._sync_env()
                    with self._state_lock:
                        if self._marked or self._fs.exists(self._marker):
                            self._fs.remove(self._marker)
                        self._marked = False
            finally:
                self._close_env()
                self._owner.release()
                self._owner = None

    def _env_or_raise(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise KvStoreError(f"{self.path}: store is closed")
        return env

    # -- reads --

    def _reader(self) -> lmdb.Transaction[bytes]:
        # One read transaction serves every read until the next commit (which
        # drops it): ~1 us saved per get over a fresh one.
        txn = self._rtxn
        if txn is None:
            txn = self._rtxn = self._env_or_raise().begin()
        return txn

    def _drop_reader(self) -> None:
        txn, self._rtxn = self._rtxn, None
        if txn is not None:
            txn.abort()

    def get(self, key: bytes) -> bytes | None:
        txn = self._rtxn or self._reader()
        if not key:
            return txn.get(_EMPTY_KEY_META, db=self._meta)
        if len(key) > MAX_KEY_BYTES:
            return None
        return txn.get(key, db=self._data)

    def scan(self, start: bytes, end: bytes | None, limit: int, max_bytes: int,
             *, overhead: int = 0) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        check_scan(limit)
        txn = self._rtxn or self._reader()
        pairs: list[tuple[bytes, bytes]] = []
        size = 0
        if not start and (end is None or end):
            value = txn.get(_EMPTY_KEY_META, db=self._meta)
            if value is not None:
                pairs.append((b"", value))
                size = len(value) + overhead
        with txn.cursor(db=self._data) as cur:
            if not start:
                found = cur.first()
            elif len(start) <= MAX_KEY_BYTES:
                found = cur.set_range(start)
            else:
                # No key extends start[:MAX]: key >= start iff key > start[:MAX].
                cut = start[:MAX_KEY_BYTES]
                found = cur.set_range(cut)
                if found and cur.key() == cut:
                    found = cur.next()
            if not found:
                return pairs, None
            return fill_page(pairs, size, cur.iternext(), end, limit, max_bytes, overhead)

    def key_count(self) -> int:
        txn = self._rtxn or self._reader()
        empty = txn.get(_EMPTY_KEY_META, db=self._meta) is not None
        return txn.stat(self._data)["entries"] + empty

    def get_meta(self, name: str) -> bytes | None:
        txn = self._rtxn or self._reader()
        return txn.get(meta_key(name), db=self._meta)

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        txn = self._rtxn or self._reader()
        with txn.cursor(db=self._sessions) as cur:
            out = [(int.from_bytes(k, "big"), v) for k, v in cur.iternext()]
        return iter(out)

    def size_bytes(self) -> int:
        txn = self._rtxn or self._reader()
        pages = _NUM_METAS
        for db in (None, self._data, self._sessions, self._meta):  # None: the main db
            st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self._psize

    # -- writes --

    def write(self) -> WriteBatch:
        self._env_or_raise()
        return _LmdbWriteBatch(self)

    def _begin_write(self) -> lmdb.Transaction[bytes]:
        env = self._env_or_raise()
        with self._state_lock:
            if self._writing:
                raise KvStoreError("a write batch is already open")
            if self._fsync and not self._marked:
                # Durable before any page of this batch can reach the disk.
                write_atomic(self._fs, self._marker, (self._boot or "").encode() + b"\n")
                self._marked = True
            self._writing = True
            self._writes += 1
        try:
            return env.begin(write=True)
        except BaseException:
            self._end_write(committed=False)
            raise

    def _end_write(self, *, committed: bool) -> None:
        with self._state_lock:
            self._writing = False
            self._writes += 1
        if committed:
            self._drop_reader()
            self._maybe_grow_early()

    def _nearly_full(self) -> bool:
        """The file's high-water mark (pages in use or free) is past 3/4 of the map."""
        pages = self._env_or_raise().info()["last_pgno"] + 1
        return pages * self._psize * 4 > self._map_size * 3

    def _maybe_grow_early(self) -> None:
        # Growing now, between batches, spares a later batch the rollback and
        # the wait for a copy_to that growing on MapFullError may need.
        if self._nearly_full() and self._bg_lock.acquire(blocking=False):
            try:
                self._grow(locked=True)
            finally:
                self._bg_lock.release()

    def _grow(self, *, locked: bool = False) -> None:
        """Double the map (no transaction may be open: the caller's batch has
        rolled back). Waits for a running ``sync``/``copy_to`` unless
        ``locked`` says the caller holds ``_bg_lock``."""
        if not locked:
            with self._bg_lock:
                self._grow(locked=True)
            return
        env = self._env_or_raise()
        self._drop_reader()
        new = self._map_size * 2
        try:
            env.set_mapsize(new)
        except lmdb.Error as e:
            raise _os_error(e, self.path) from e
        log.info("%s: map grown from %d to %d bytes", self.path, self._map_size, new)
        self._map_size = new

    # -- durability and snapshots --

    def _sync_env(self) -> None:
        try:
            self._env_or_raise().sync(True)
        except lmdb.Error as e:
            raise _os_error(e, self.path) from e

    def sync(self) -> None:
        if not self._fsync:
            return
        with self._bg_lock:
            with self._state_lock:
                writes, idle = self._writes, not self._writing
            self._sync_env()
            if idle:
                with self._state_lock:
                    if self._marked and not self._writing and self._writes == writes:
                        # Not durable without an fsync of the directory: a
                        # power loss may bring it back, a false alarm only.
                        self._fs.remove(self._marker)
                        self._marked = False

    def copy_to(self, path: str) -> int:
        tmp = path + TMP_SUFFIX
        with self._bg_lock:
            env = self._env_or_raise()
            if self._fs.exists(tmp):
                self._fs.remove(tmp)
            try:
                env.copy(tmp, compact=True)
            except lmdb.Error as e:
                raise _os_error(e, tmp) from e
        size = os.path.getsize(tmp)
        if self._fsync:
            f = self._fs.open_append(tmp)
            try:
                f.sync()
            finally:
                f.close()
        self._fs.rename(tmp, path)
        if self._fsync:
            self._fs.fsync_dir(os.path.dirname(path) or ".")
        return size

    def replace_with(self, path: str) -> None:
        _verify_lmdb_copy(path)
        if self._writing:
            raise KvStoreError("replace_with() inside a write batch")
        with self._bg_lock:
            self._close_env()
            try:
                if self._fsync:
                    f = self._fs.open_append(path)
                    try:
                        f.sync()
                    finally:
                        f.close()
                self._fs.rename(path, self.path)
            except BaseException:
                self._open_env()
                raise
            if self._fsync:
                self._fs.fsync_dir(self._dir)
                with self._state_lock:
                    # The new file is durable; the marker spoke of the old one.
                    if self._marked or self._fs.exists(self._marker):
                        self._fs.remove(self._marker)
                    self._marked = False
            self._open_env()


def _verify_lmdb_copy(path: str) -> None:
    """O(1) check that ``path`` is an LMDB store copy (``StoreFormatError``)."""
    try:
        env = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=_MAX_DBS,
                        create=False)
    except lmdb.Error as e:
        raise StoreFormatError(f"{path}: not an LMDB store copy: {e}") from e
    except OSError as e:
        raise StoreFormatError(f"{path}: cannot be opened: {e}") from e
    try:
        for name in (b"data", b"sessions", b"meta"):
            env.open_db(name, create=False)
    except lmdb.Error as e:
        raise StoreFormatError(f"{path}: not a store copy (database {name!r}: {e})") from e
    finally:
        env.close()
