"""The KvStore contract, run against LmdbKvStore and MemoryKvStore alike,
then what only the LMDB store has: a file that survives reopen and kill -9,
map growth, the unsynced marker, crash points of replace_with and copy_to,
and a copy that does not hold up writers."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvserver.kv_store import (
    MAX_KEY_BYTES,
    KvStore,
    KvStoreError,
    StoreDamagedError,
    StoreFormatError,
)
from kvserver.lmdb_store import OWNER_LOCK_FILE, UNSYNCED_MARKER, LmdbKvStore
from kvserver.memory_store import MemoryKvStore

REPO = Path(__file__).resolve().parents[2]

Factory = Callable[[], KvStore]


@pytest.fixture(params=["lmdb", "memory"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Makes fresh, empty stores of one kind (closed after the test)."""
    made: list[KvStore] = []

    def make() -> KvStore:
        store: KvStore
        if request.param == "lmdb":
            store = LmdbKvStore(str(tmp_path / f"store{len(made)}"), map_size=1 << 20,
                                fsync=False)
        else:
            store = MemoryKvStore(fsync=False)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def put_all(store: KvStore, pairs: dict[bytes, bytes]) -> None:
    with store.write() as b:
        for k, v in pairs.items():
            b.put(k, v)


def everything(store: KvStore) -> tuple[list[tuple[bytes, bytes]], list[tuple[int, bytes]]]:
    pairs, more = store.scan(b"", None, 1 << 30, 1 << 62)
    assert not more
    return pairs, list(store.sessions())


# -- the contract, for both stores --

def test_get_put_overwrite_delete(new_store: Factory) -> None:
    s = new_store()
    assert s.get(b"k") is None and s.key_count() == 0
    put_all(s, {b"k": b"v1", b"j": b""})
    assert s.get(b"k") == b"v1" and s.get(b"j") == b"" and s.key_count() == 2
    put_all(s, {b"k": b"v2"})
    assert s.get(b"k") == b"v2" and s.key_count() == 2
    with s.write() as b:
        assert b.delete(b"k") is True
        assert b.delete(b"k") is False
        assert b.delete(b"never") is False
    assert s.get(b"k") is None and s.key_count() == 1


def test_any_byte_in_a_key_and_the_empty_key(new_store: Factory) -> None:
    s = new_store()
    keys = [b"", b"\x00", b"\x00\x00", b"\xff", b"\xff" * MAX_KEY_BYTES, b"a\x00b", b"a"]
    put_all(s, {k: b"v" + k for k in keys})
    for k in keys:
        assert s.get(k) == b"v" + k
    assert [k for k, _ in s.scan(b"", None, 100, 1 << 20)[0]] == sorted(keys)
    assert s.key_count() == len(keys)
    with s.write() as b:
        assert b.delete(b"") is True
    assert s.get(b"") is None and s.key_count() == len(keys) - 1


def test_a_key_over_the_limit_is_refused_and_reads_as_absent(new_store: Factory) -> None:
    s = new_store()
    with pytest.raises(ValueError, match="511"), s.write() as b:
        b.put(b"x" * (MAX_KEY_BYTES + 1), b"v")
    with s.write() as b:
        assert b.get(b"x" * 600) is None
        assert b.delete(b"x" * 600) is False
    assert s.get(b"x" * 600) is None and s.key_count() == 0


def test_an_exception_in_a_batch_leaves_nothing(new_store: Factory) -> None:
    s = new_store()
    put_all(s, {b"keep": b"1", b"gone": b"2"})
    with s.write() as b:
        b.put_session(7, b"s7")
        b.set_meta("applied", b"10")
    before = (everything(s), s.get_meta("applied"), s.size_bytes())
    with pytest.raises(RuntimeError, match="boom"), s.write() as b:
        b.put(b"new", b"x")
        b.put(b"keep", b"changed")
        assert b.delete(b"gone")
        b.put_session(7, b"changed")
        b.put_session(8, b"s8")
        b.delete_session(7)
        b.set_meta("applied", b"11")
        raise RuntimeError("boom")
    assert (everything(s), s.get_meta("applied"), s.size_bytes()) == before
    put_all(s, {b"after": b"ok"})  # the store still takes writes
    assert s.get(b"after") == b"ok"


def test_a_batch_reads_its_own_writes_and_others_see_them_at_commit(new_store: Factory) -> None:
    s = new_store()
    put_all(s, {b"a": b"1"})
    with s.write() as b:
        b.put(b"a", b"2")
        b.put(b"b", b"3")
        assert b.get(b"a") == b"2" and b.get(b"b") == b"3"
        assert s.get(b"a") == b"1" and s.get(b"b") is None  # not committed yet
        assert b.delete(b"b") is True
        assert b.get(b"b") is None
        b.put(b"", b"empty")
        assert b.get(b"") == b"empty"
    assert s.get(b"a") == b"2" and s.get(b"b") is None and s.get(b"") == b"empty"


def test_one_batch_at_a_time_and_only_inside_its_block(new_store: Factory) -> None:
    s = new_store()
    with s.write() as b:
        with pytest.raises(KvStoreError), s.write():
            pass
        b.put(b"k", b"v")
    with pytest.raises(KvStoreError):
        b.put(b"k", b"w")
    with s.write() as b2:
        b2.put(b"k", b"w")
    assert s.get(b"k") == b"w"


def test_scan_bounds_limit_bytes_and_the_more_flag(new_store: Factory) -> None:
    s = new_store()
    put_all(s, {b"a": b"1", b"b": b"22", b"b\x00": b"333", b"c": b"4444", b"\xff": b"5"})
    assert s.scan(b"b", b"c", 10, 1000) == ([(b"b", b"22"), (b"b\x00", b"333")], None)
    assert s.scan(b"b", b"b\x00", 10, 1000) == ([(b"b", b"22")], None)  # end excluded
    assert s.scan(b"a", None, 2, 1000) == ([(b"a", b"1"), (b"b", b"22")], b"b\x00")
    # Exactly as many as the range holds: no more.
    assert s.scan(b"c", None, 2, 1000) == ([(b"c", b"4444"), (b"\xff", b"5")], None)
    assert s.scan(b"a", b"b\x00", 2, 1000) == ([(b"a", b"1"), (b"b", b"22")], None)
    # Bytes: 1+1, then 1+2 = 5 total fits in 5, the next (2+3) does not.
    assert s.scan(b"a", None, 10, 5) == ([(b"a", b"1"), (b"b", b"22")], b"b\x00")
    # With 1 byte of overhead per pair only the first fits.
    assert s.scan(b"a", None, 10, 5, overhead=1) == ([(b"a", b"1")], b"b")
    # Always one pair, however small max_bytes.
    assert s.scan(b"c", None, 10, 0) == ([(b"c", b"4444")], b"\xff")
    assert s.scan(b"d", b"\xff", 10, 1000) == ([], None)
    assert s.scan(b"\xff\x00", None, 10, 1000) == ([], None)
    assert s.scan(b"z", b"a", 10, 1000) == ([], None)
    with pytest.raises(ValueError):
        s.scan(b"", None, 0, 1000)


def test_scan_pages_continue_from_the_last_key_over_binary_keys(new_store: Factory) -> None:
    s = new_store()
    rng = random.Random(14)
    model: dict[bytes, bytes] = {}
    for _ in range(4):
        batch = {}
        for _ in range(300):
            key = bytes(rng.choice(b"\x00\x01\x7f\x80\xfe\xff") for _ in range(rng.randint(0, 4)))
            batch[key] = rng.randbytes(rng.randint(0, 40))
        batch[b"\xff" * MAX_KEY_BYTES] = b"longest"
        put_all(s, batch)
        model.update(batch)
    ordered = sorted(model.items())
    for _ in range(60):
        start = rng.choice([b"", rng.randbytes(rng.randint(1, 3))])
        end = rng.choice([None, rng.randbytes(rng.randint(1, 3)), b"\xff" * 600])
        limit, max_bytes = rng.randint(1, 50), rng.randint(0, 400)
        want = [(k, v) for k, v in ordered if k >= start and (end is None or k < end)]
        got: list[tuple[bytes, bytes]] = []
        cursor = start
        while True:
            page, nxt = s.scan(cursor, end, limit, max_bytes)
            assert len(page) <= limit
            if len(page) > 1:
                assert sum(len(k) + len(v) for k, v in page) <= max_bytes
            got += page
            if nxt is None:
                break
            assert page, "a next key after an empty page"
            assert nxt > page[-1][0]
            cursor = nxt
        assert got == want, (start, end, limit, max_bytes)


def test_sessions_and_meta_round_trip(new_store: Factory) -> None:
    s = new_store()
    ids = [0, 1, 255, 256, 1 << 40, (1 << 64) - 1]
    with s.write() as b:
        for cid in reversed(ids):
            b.put_session(cid, b"session %d" % cid)
        b.set_meta("applied_index", b"\x00\x01")
        b.set_meta("term", b"")
    assert list(s.sessions()) == [(cid, b"session %d" % cid) for cid in ids]
    with s.write() as b:
        b.delete_session(256)
        b.delete_session(12345)  # absent: fine
        b.put_session(1, b"changed")
        b.set_meta("applied_index", b"\x00\x02")
    assert dict(s.sessions()) == {0: b"session 0", 1: b"changed", 255: b"session 255",
                                  1 << 40: b"session %d" % (1 << 40),
                                  (1 << 64) - 1: b"session %d" % ((1 << 64) - 1)}
    assert s.get_meta("applied_index") == b"\x00\x02" and s.get_meta("term") == b""
    assert s.get_meta("missing") is None
    assert s.key_count() == 0 and s.get(b"") is None  # none of it is data
    with s.write() as b:
        for bad in (-1, 1 << 64):
            with pytest.raises(ValueError):
                b.put_session(bad, b"x")
        for name in ("", "a\x00b", "x" * 600):
            with pytest.raises(ValueError):
                b.set_meta(name, b"x")


def test_size_grows_with_data_and_shrinks_after_deletes(new_store: Factory) -> None:
    s = new_store()
    empty = s.size_bytes()
    put_all(s, {b"k%05d" % i: b"v" * 200 for i in range(2000)})
    full = s.size_bytes()
    assert full >= empty + 2000 * 200
    with s.write() as b:
        for i in range(2000):
            b.delete(b"k%05d" % i)
    assert s.size_bytes() < full // 4


def test_copy_then_replace_gives_an_identical_store(new_store: Factory, tmp_path: Path) -> None:
    src, dst = new_store(), new_store()
    rng = random.Random(1)
    put_all(src, {rng.randbytes(rng.randint(0, 20)): rng.randbytes(rng.randint(0, 300))
                  for _ in range(3000)})
    with src.write() as b:
        b.put_session(3, b"three")
        b.set_meta("applied", b"42")
    put_all(dst, {b"old": b"content"})
    with dst.write() as b:
        b.put_session(9, b"old session")
        b.set_meta("other", b"x")
    path = str(tmp_path / "copy.snap")
    size = src.copy_to(path)
    assert size == os.path.getsize(path) > 0
    put_all(src, {b"after the copy": b"not in it"})

    dst.replace_with(path)
    assert not os.path.exists(path)  # consumed
    src_pairs = [p for p in everything(src)[0] if p[0] != b"after the copy"]
    assert everything(dst) == (src_pairs, [(3, b"three")])
    assert dst.get_meta("applied") == b"42" and dst.get_meta("other") is None
    assert dst.key_count() == len(src_pairs) and dst.get(b"old") is None
    put_all(dst, {b"new": b"write"})  # and it takes writes
    assert dst.get(b"new") == b"write"


def test_replace_with_a_bad_file_changes_nothing(new_store: Factory, tmp_path: Path) -> None:
    s = new_store()
    put_all(s, {b"k": b"v"})
    bad = tmp_path / "bad.snap"
    for content in (b"", b"garbage" * 1000):
        bad.write_bytes(content)
        with pytest.raises(StoreFormatError):
            s.replace_with(str(bad))
        assert s.get(b"k") == b"v"
    # A copy from the other kind of store is not one this store can read.
    other: KvStore = (MemoryKvStore(fsync=False) if isinstance(s, LmdbKvStore)
                      else LmdbKvStore(str(tmp_path / "other"), fsync=False))
    other.copy_to(str(bad))
    other.close()
    with pytest.raises(StoreFormatError):
        s.replace_with(str(bad))
    put_all(s, {b"k2": b"v2"})
    assert everything(s)[0] == [(b"k", b"v"), (b"k2", b"v2")]


def test_replace_while_a_previous_copy_is_open_elsewhere(new_store: Factory,
                                                         tmp_path: Path) -> None:
    s = new_store()
    put_all(s, {b"gen": b"1", b"a": b"x"})
    first = str(tmp_path / "first.snap")
    s.copy_to(first)
    with open(first, "rb") as streaming:  # e.g. being sent to a follower
        head = streaming.read(100)
        put_all(s, {b"gen": b"2"})
        second = str(tmp_path / "second.snap")
        s.copy_to(second)
        put_all(s, {b"gen": b"3"})
        s.replace_with(second)
        assert s.get(b"gen") == b"2"
        put_all(s, {b"gen": b"4"})
        rest = streaming.read()
    # The streamed copy is still whole and still the first state.
    received = tmp_path / "received.snap"
    received.write_bytes(head + rest)
    follower = new_store()
    follower.replace_with(str(received))
    assert everything(follower)[0] == [(b"a", b"x"), (b"gen", b"1")]
    assert s.get(b"gen") == b"4"


def test_closed_store_refuses_use(new_store: Factory, tmp_path: Path) -> None:
    s = new_store()
    put_all(s, {b"k": b"v"})
    s.close()
    s.close()  # idempotent
    for call in (lambda: s.get(b"k"), lambda: s.scan(b"", None, 1, 1), s.key_count,
                 s.write, lambda: s.copy_to(str(tmp_path / "c"))):
        with pytest.raises(KvStoreError):
            call()


def test_random_operations_match_a_model(new_store: Factory) -> None:
    s = new_store()
    rng = random.Random(7)
    model: dict[bytes, bytes] = {}
    for _ in range(150):
        staged = dict(model)
        fail = rng.random() < 0.2
        try:
            with s.write() as b:
                for _ in range(rng.randint(1, 30)):
                    key = bytes([rng.randrange(4)]) * rng.randint(0, 3)
                    if rng.random() < 0.6:
                        value = rng.randbytes(rng.randint(0, 5))
                        b.put(key, value)
                        staged[key] = value
                    else:
                        assert b.delete(key) == (staged.pop(key, None) is not None)
                    assert b.get(key) == staged.get(key)
                if fail:
                    raise ValueError("abort")
        except ValueError:
            pass
        if not fail:
            model = staged
        assert everything(s)[0] == sorted(model.items())
        assert s.key_count() == len(model)


def background_copies_during_writes(s: KvStore, tmp_path: Path) -> None:
    """A worker thread syncs and copies in a loop while this thread writes,
    then replaces the store with one of its copies while the worker runs."""
    with s.write() as b:
        for i in range(2000):
            b.put(b"seed%04d" % i, b"s" * 200)
        b.set_meta("applied", b"-1")
    stop = threading.Event()
    copies: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            n = 0
            while not stop.is_set():
                s.sync()
                path = str(tmp_path / f"bg{n}.snap")
                s.copy_to(path)
                copies.append((n, path))
                n += 1
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    try:
        for n in range(200):
            with s.write() as b:
                b.put(b"w%03d" % n, b"x" * 100)
                b.set_meta("applied", b"%d" % n)
            if n == 100:
                while not copies:
                    time.sleep(0.001)
                s.replace_with(copies[-1][1])  # waits for a copy in progress
                restored = s.get_meta("applied")
                assert restored is not None and int(restored) <= 100
                # One moment: the data and the meta of the same transactions.
                written = [k for k, _ in s.scan(b"w", b"x", 1000, 1 << 30)[0]]
                assert written == [b"w%03d" % i for i in range(int(restored) + 1)]
        assert s.get_meta("applied") == b"199"
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    s.sync()
    final = everything(s)
    last = str(tmp_path / "last.snap")
    s.copy_to(last)
    s.replace_with(last)
    assert everything(s) == final


def test_background_sync_and_copies_alongside_writes(new_store: Factory, tmp_path: Path) -> None:
    background_copies_during_writes(new_store(), tmp_path)


# -- LmdbKvStore only --

def lmdb_store(path: Path, **kw: object) -> LmdbKvStore:
    return LmdbKvStore(str(path), **kw)  # type: ignore[arg-type]


def test_lmdb_reopen_keeps_everything(tmp_path: Path) -> None:
    s = lmdb_store(tmp_path / "kv")
    put_all(s, {b"": b"e", b"k": b"v"})
    with s.write() as b:
        b.put_session(5, b"five")
        b.set_meta("applied", b"9")
    s.close()
    assert sorted(os.listdir(tmp_path / "kv")) == ["kv.flock", "kv.mdb", "kv.mdb-lock"]
    s = lmdb_store(tmp_path / "kv")
    assert everything(s) == ([(b"", b"e"), (b"k", b"v")], [(5, b"five")])
    assert s.get_meta("applied") == b"9"
    s.close()


def test_lmdb_one_owner_per_directory(tmp_path: Path) -> None:
    s = lmdb_store(tmp_path / "kv", fsync=False)
    with pytest.raises(BlockingIOError):
        lmdb_store(tmp_path / "kv", fsync=False)
    s.close()
    lmdb_store(tmp_path / "kv", fsync=False).close()


def test_lmdb_file_is_not_preallocated(tmp_path: Path) -> None:
    s = lmdb_store(tmp_path / "kv", map_size=1 << 30, fsync=False)
    put_all(s, {b"k": b"v"})
    st = os.stat(s.path)
    assert st.st_size < 1 << 20 and st.st_blocks * 512 < 1 << 20
    s.close()


def test_lmdb_map_grows_instead_of_failing(tmp_path: Path) -> None:
    s = lmdb_store(tmp_path / "kv", map_size=1 << 20, fsync=False)
    value = b"v" * 1000
    for n in range(5):  # batches that cross the 1 MiB map several times over
        put_all(s, {b"%d-%05d" % (n, i): value for i in range(2000)})
    # One batch larger than the map is then on its own.
    with s.write() as b:
        for i in range(12000):
            b.put(b"big-%05d" % i, value)
        assert b.get(b"big-00000") == value and b.get(b"0-00000") == value
    assert s.key_count() == 22000
    assert all(s.get(b"%d-%05d" % (n, i)) == value for n in range(5) for i in range(0, 2000, 97))
    assert s.size_bytes() > 22000 * 1000
    s.close()
    s = lmdb_store(tmp_path / "kv", map_size=1 << 20, fsync=False)
    assert s.key_count() == 22000 and s.get(b"big-11999") == value
    s.close()


def test_lmdb_map_growth_waits_for_a_copy_in_another_thread(tmp_path: Path) -> None:
    s = lmdb_store(tmp_path / "kv", map_size=1 << 20, fsync=False)
    put_all(s, {b"seed%04d" % i: b"s" * 500 for i in range(1000)})
    stop = threading.Event()
    copies: list[int] = []
    errors: list[BaseException] = []

    def copier() -> None:
        try:
            while not stop.is_set():
                path = str(tmp_path / "copy.snap")
                copies.append(s.copy_to(path))
                os.remove(path)
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=copier)
    t.start()
    try:
        for n in range(30):
            put_all(s, {b"w%02d-%04d" % (n, i): b"w" * 500 for i in range(300)})
    finally:
        stop.set()
        t.join()
    assert not errors and copies
    assert s.key_count() == 1000 + 30 * 300
    s.close()


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_lmdb_kill_9_loses_no_commit(tmp_path: Path) -> None:
    d = tmp_path / "kv"
    child = _run_child("""
        import os, signal, sys
        from kvserver.lmdb_store import LmdbKvStore
        s = LmdbKvStore(sys.argv[1])
        for n in range(50):
            with s.write() as b:
                b.put(b"k%03d" % n, b"v" * 1000)
                b.set_meta("applied", b"%d" % n)
        with s.write() as b:  # never committed
            b.put(b"torn", b"x")
            os.kill(os.getpid(), signal.SIGKILL)
    """, str(d))
    assert child.returncode == -9, child.stderr
    assert (d / UNSYNCED_MARKER).exists()  # commits were never synced, same boot
    s = lmdb_store(d)
    assert s.key_count() == 50 and s.get_meta("applied") == b"49" and s.get(b"torn") is None
    assert not (d / UNSYNCED_MARKER).exists()  # open synced them
    s.close()


def test_lmdb_unsynced_commits_from_another_boot_refuse_to_open(tmp_path: Path) -> None:
    d = tmp_path / "kv"
    s = lmdb_store(d)
    put_all(s, {b"k": b"v"})
    assert (d / UNSYNCED_MARKER).exists()
    s.sync()
    assert not (d / UNSYNCED_MARKER).exists()
    put_all(s, {b"k2": b"v2"})
    assert (d / UNSYNCED_MARKER).exists()
    # As if the machine lost power now: the page cache, not the file, had
    # the last commits; the marker survives, written before them.
    marker_from_last_boot = b"00000000-0000-0000-0000-000000000000\n"
    s.close()
    (d / UNSYNCED_MARKER).write_bytes(marker_from_last_boot)
    with pytest.raises(StoreDamagedError, match="never synced"):
        lmdb_store(d)
    assert (d / "kv.mdb").exists()  # refused, not deleted
    s = lmdb_store(d, discard_damaged=True)
    assert s.key_count() == 0 and not (d / UNSYNCED_MARKER).exists()
    s.close()


def test_lmdb_a_marker_is_only_cleared_by_a_sync_with_no_write_in_between(
        tmp_path: Path) -> None:
    d = tmp_path / "kv"
    s = lmdb_store(d)
    assert not (d / UNSYNCED_MARKER).exists()  # a new store is synced at open
    with s.write() as b:
        b.put(b"k", b"v")
        assert (d / UNSYNCED_MARKER).exists()  # before any page is written
        s.sync()  # a batch is open: cannot vouch for it
        assert (d / UNSYNCED_MARKER).exists()
    s.sync()
    assert not (d / UNSYNCED_MARKER).exists()
    s.close()


def test_lmdb_background_sync_and_copies_with_fsync_on(tmp_path: Path) -> None:
    s = lmdb_store(tmp_path / "kv", map_size=1 << 20)
    background_copies_during_writes(s, tmp_path)
    s.sync()
    assert not (tmp_path / "kv" / UNSYNCED_MARKER).exists()
    s.close()


def test_lmdb_not_an_lmdb_file_is_damage(tmp_path: Path) -> None:
    d = tmp_path / "kv"
    d.mkdir()
    (d / "kv.mdb").write_bytes(b"not lmdb" * 2000)
    with pytest.raises(StoreDamagedError, match="not a readable LMDB file"):
        lmdb_store(d)
    assert (d / OWNER_LOCK_FILE).exists()  # and released: it opens again
    s = lmdb_store(d, discard_damaged=True)
    assert s.key_count() == 0
    s.close()


_CRASH_CHILD = """
    import os, sys
    from raft.fileio import OsFileSystem
    from kvserver.lmdb_store import LmdbKvStore
    directory, incoming, point = sys.argv[1:4]
    real_rename, real_fsync_dir = OsFileSystem.rename, OsFileSystem.fsync_dir

    def rename(self, src, dst):
        if point == "before-rename":
            os._exit(3)
        real_rename(self, src, dst)
        if point == "after-rename":
            os._exit(3)

    def fsync_dir(self, path):
        real_fsync_dir(self, path)
        if point == "after-fsync-dir":
            os._exit(3)

    s = LmdbKvStore(directory)
    OsFileSystem.rename, OsFileSystem.fsync_dir = rename, fsync_dir
    if point == "in-copy":
        s.copy_to(incoming)
    else:
        s.replace_with(incoming)
    os._exit(0)
"""


@pytest.mark.parametrize("point", ["before-rename", "after-rename", "after-fsync-dir", "done"])
def test_lmdb_a_crash_in_replace_with_leaves_the_old_store_or_the_new(
        tmp_path: Path, point: str) -> None:
    d = tmp_path / "kv"
    old = lmdb_store(d)
    put_all(old, {b"who": b"old", b"old-only": b"1"})
    old.close()
    donor = lmdb_store(tmp_path / "donor")
    put_all(donor, {b"who": b"new", b"new-only": b"2"})
    incoming = tmp_path / "incoming.mdb"  # as received from the leader
    donor.copy_to(str(incoming))
    donor.close()

    child = _run_child(_CRASH_CHILD, str(d), str(incoming), point)
    assert child.returncode == (0 if point == "done" else 3), child.stderr
    s = lmdb_store(d)
    want = b"old" if point == "before-rename" else b"new"
    assert s.get(b"who") == want
    assert s.key_count() == 2
    assert incoming.exists() == (point == "before-rename")  # consumed once installed
    assert sorted(os.listdir(d)) == ["kv.flock", "kv.mdb", "kv.mdb-lock"]
    s.close()


def test_lmdb_a_crash_in_copy_to_leaves_no_partial_copy(tmp_path: Path) -> None:
    d = tmp_path / "kv"
    s = lmdb_store(d)
    put_all(s, {b"k": b"v"})
    s.close()
    target = d / "snapshot.mdb"
    child = _run_child(_CRASH_CHILD, str(d), str(target), "in-copy")
    assert child.returncode == 0, child.stderr  # in-copy does not crash by itself
    assert target.exists()
    target.unlink()
    # Now crash before the copy is renamed into place.
    crash = _CRASH_CHILD.replace('if point == "before-rename"', 'if True')
    child = _run_child(crash, str(d), str(target), "in-copy")
    assert child.returncode == 3, child.stderr
    assert not target.exists() and (d / "snapshot.mdb.tmp").exists()
    s = lmdb_store(d)  # the store's directory: the leftover goes at open
    assert not (d / "snapshot.mdb.tmp").exists() and s.get(b"k") == b"v"
    s.close()


def test_lmdb_disk_errors_raise_oserror_and_roll_back(tmp_path: Path) -> None:
    # A file-size limit makes the kernel refuse the write (EFBIG) as a full
    # disk would (ENOSPC): the store must not treat it as a full map.
    child = _run_child("""
        import resource, signal, sys
        from kvserver.lmdb_store import LmdbKvStore
        s = LmdbKvStore(sys.argv[1], fsync=False)
        with s.write() as b:
            b.put(b"kept", b"1")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
        try:
            with s.write() as b:
                for i in range(10000):
                    b.put(b"k%05d" % i, b"v" * 1000)
        except OSError as e:
            print("OSError", e.errno)
        else:
            print("no error")
        print(s.get(b"kept"), s.key_count())
    """, str(tmp_path / "kv"))
    assert child.returncode == 0, child.stderr
    out = child.stdout.split("\n")
    # LMDB reports the short write as EIO, or passes EFBIG on.
    assert out[0] in (f"OSError {errno.EIO}", f"OSError {errno.EFBIG}"), child.stdout
    assert out[1] == "b'1' 1"


def test_lmdb_copy_in_a_thread_does_not_hold_up_writes(tmp_path: Path) -> None:
    s = lmdb_store(tmp_path / "kv")
    value = b"v" * 1000
    for n in range(10):
        put_all(s, {b"%d-%05d" % (n, i): value for i in range(10_000)})  # 100k keys
    put_all(s, {b"warm": b"up"})  # the unsynced marker's fsyncs happen here, not below
    done = threading.Event()
    sizes: list[int] = []

    def copy() -> None:
        try:
            sizes.append(s.copy_to(str(tmp_path / "copy.snap")))
        finally:
            done.set()

    t = threading.Thread(target=copy)
    t.start()
    latencies = []
    rng = random.Random(3)
    while not done.is_set():
        t0 = time.perf_counter()
        with s.write() as b:
            b.put(rng.randbytes(16), b"x" * 100)
        latencies.append(time.perf_counter() - t0)
    t.join()
    assert sizes and sizes[0] > 100_000 * 1000
    assert len(latencies) >= 5, "the copy ended before writes could overlap it"
    assert max(latencies) < 0.05, sorted(latencies)[-5:]
    s.close()


# -- MemoryKvStore only --

def test_memory_copy_file_is_checked(tmp_path: Path) -> None:
    s = MemoryKvStore(fsync=False)
    put_all(s, {b"k": b"v" * 100})
    path = tmp_path / "c.snap"
    s.copy_to(str(path))
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    other = MemoryKvStore(fsync=False)
    with pytest.raises(StoreFormatError, match="checksum"):
        other.replace_with(str(path))
    assert path.exists()  # not consumed
