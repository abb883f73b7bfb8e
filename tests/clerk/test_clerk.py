"""The clerks' bytes API, scans and compare-and-set, against an in-process
cluster (tests/kvserver/inproc.py: three ``KvNode``s on real TCP)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest

from clerk import AsyncClerk, Clerk, ScanResult, TooLarge, prefix_end
from clerk.client import MAX_BATCH
from kvserver import kv_pb2
from kvserver.limits import Limits
from kvserver.server import KvNode
from kvserver.service import KvService
from rpc import RpcError, Status
from tests.kvserver.inproc import WAIT, cluster, leader_of

pytestmark = pytest.mark.timeout(60)

#: Pages of at most 4 pairs, so that scans cross pages cheaply.
PAGED = Limits(max_scan_keys=4)


def clerk_for(nodes: list[KvNode], **kwargs: Any) -> AsyncClerk:
    return AsyncClerk(nodes[0].config.addresses, timeout=WAIT, **kwargs)


def test_prefix_end_is_the_first_key_after_the_prefix() -> None:
    assert prefix_end(b"user/") == b"user0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_end(b"\x00") == b"\x01"
    assert prefix_end(b"\xff\xff") is None  # every key above is a match
    assert prefix_end(b"") is None


def test_scan_result_is_a_list_that_knows_where_to_go_on() -> None:
    result = ScanResult([(b"a", b"1")], next_start=b"b")
    assert result == [(b"a", b"1")] and result.more
    assert not ScanResult().more and ScanResult() == []
    assert "next_start=b'b'" in repr(result)


async def test_bytes_and_text_in_bytes_out(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes, clerk_for(nodes) as ck:
        await ck.put(b"\x00\xff", b"\xff\xfe\x00")
        assert await ck.get(b"\x00\xff") == b"\xff\xfe\x00"
        await ck.put("clé", "välue")  # text goes as UTF-8
        assert await ck.get("clé".encode()) == "välue".encode()
        assert await ck.get("clé") == "välue".encode()
        await ck.append(b"\x00\xff", "é")
        assert await ck.get(b"\x00\xff") == b"\xff\xfe\x00\xc3\xa9"
        await ck.put(bytearray(b"ba"), memoryview(b"mv"))  # type: ignore[arg-type]
        assert await ck.get(b"ba") == b"mv"
        assert await ck.get("missing") == b""
        assert await ck.get("missing", None) is None
        assert await ck.get("missing", default=b"?") == b"?"
        await ck.put("empty", b"")
        assert await ck.get("empty", None) == b""  # present, empty
        await ck.delete(b"\x00\xff")
        assert await ck.get(b"\x00\xff", None) is None
        with pytest.raises(TypeError, match="key must be str or bytes, not int"):
            await ck.put(5, b"v")  # type: ignore[arg-type]
        with pytest.raises(UnicodeEncodeError):
            await ck.put("\udcff", b"v")  # a lone surrogate is no UTF-8
        await ck.put("after", "ok")  # the refused calls used up nothing
        assert await ck.get("after") == b"ok"


async def test_scan_crosses_pages_in_key_order(tmp_path: Path) -> None:
    keys = [b"user/" + bytes([i]) for i in (0, 1, 0x7F, 0x80, 0xFE, 0xFF)]
    keys += [b"user/\xff\xff", b"user/a/b", b"user", b"user0", b"usea", b"\xff"]
    async with cluster(tmp_path, limits=PAGED) as nodes, clerk_for(nodes) as ck:
        await asyncio.gather(*(ck.put(k, k[::-1]) for k in keys))
        everything = await ck.scan()
        assert everything == sorted((k, k[::-1]) for k in keys) and not everything.more
        users = await ck.scan_prefix("user/")
        assert [k for k, _ in users] == sorted(k for k in keys if k.startswith(b"user/"))
        assert [k for k, _ in await ck.scan_prefix(b"user/\xff")] == [
            b"user/\xff", b"user/\xff\xff"]
        assert [k for k, _ in await ck.scan_prefix(b"\xff")] == [b"\xff"]
        assert [k for k, _ in await ck.scan(b"user", b"user/\x80")] == [
            b"user", b"user/\x00", b"user/\x01", b"user/a/b", b"user/\x7f"]
        assert await ck.scan("b", "a") == [] and await ck.scan("a", b"") == []
        assert await ck.scan_prefix("nothing/") == []


async def test_a_limited_scan_says_where_to_continue(tmp_path: Path) -> None:
    keys = [b"k%02d" % i for i in range(11)]
    async with cluster(tmp_path, limits=PAGED) as nodes, clerk_for(nodes) as ck:
        await asyncio.gather(*(ck.put(k, b"v") for k in keys))
        seen: list[bytes] = []
        start: bytes | None = b"k"
        pages = 0
        while start is not None:
            page = await ck.scan(start, b"k10", limit=3)  # 3 of the server's 4
            assert len(page) <= 3
            seen += [k for k, _ in page]
            start = page.next_start
            pages += 1
        assert seen == keys[:10] and pages == 4
        big = await ck.scan_prefix("k", limit=9)  # 3 pages of the server's
        assert [k for k, _ in big] == keys[:9] and big.next_start == b"k09" and big.more
        exact = await ck.scan_prefix("k", limit=11)
        assert len(exact) == 11 and not exact.more
        with pytest.raises(ValueError, match="limit must be at least 1"):
            await ck.scan(limit=0)
        with pytest.raises(TooLarge, match="scan start is 512 bytes"):
            await ck.scan(b"s" * 512)


async def test_scans_are_never_batched_and_see_concurrent_writes_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batched: list[int] = []
    original = KvService.Batch

    @functools.wraps(original)  # keeps the @returns_future mark
    def batch(self: KvService, request: kv_pb2.BatchRequest) -> Any:
        batched.append(len(request.gets) + len(request.writes))
        return original(self, request)

    monkeypatch.setattr(KvService, "Batch", batch)
    queued: list[str] = []
    enqueue = AsyncClerk._enqueue

    def record(self: AsyncClerk, server: int, method: str, request: Any) -> Any:
        queued.append(method)
        return enqueue(self, server, method, request)

    monkeypatch.setattr(AsyncClerk, "_enqueue", record)
    async with cluster(tmp_path, limits=PAGED) as nodes, clerk_for(nodes) as ck:
        await ck.put("warm", "up")
        results = await asyncio.gather(
            *(ck.put(b"s%03d" % i, b"%d" % i) for i in range(2 * MAX_BATCH)),
            *(ck.scan_prefix("s") for _ in range(5)))
        for scan in results[2 * MAX_BATCH:]:
            assert isinstance(scan, ScanResult)
            assert [k for k, _ in scan] == sorted(k for k, _ in scan)
        final = await ck.scan_prefix("s")
        assert final == [(b"s%03d" % i, b"%d" % i) for i in range(2 * MAX_BATCH)]
    # The writes went in batches; the scans, which a Batch cannot carry, alone.
    assert batched and sum(batched) <= 2 * MAX_BATCH + 1
    assert "PutAppend" in queued and "Scan" not in queued


async def test_two_clerks_racing_cas_exactly_one_wins(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes, clerk_for(nodes) as a, clerk_for(nodes) as b:
        for round_ in range(10):
            key = f"race{round_}"
            won = await asyncio.gather(a.cas(key, None, b"a"), b.cas(key, None, b"b"))
            assert sorted(won) == [False, True]
            assert await a.get(key) == (b"a" if won[0] else b"b")

        # A counter incremented by CAS loops: no increment lost or doubled.
        async def increment(ck: AsyncClerk) -> int:
            tries = 0
            while True:
                tries += 1
                old = await ck.get("counter", None)
                new = b"%d" % (int(old or b"0") + 1)
                if await ck.cas("counter", old, new):
                    return tries

        await asyncio.gather(*(increment(ck) for ck in (a, b) for _ in range(10)))
        assert await a.get("counter") == b"20"


async def test_many_cas_in_flight_on_one_clerk_each_get_their_answer(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes, clerk_for(nodes) as ck:
        await ck.put("warm", "up")
        first = await asyncio.gather(*(ck.cas(b"c%d" % i, None, b"1") for i in range(100)))
        assert first == [True] * 100
        again = await asyncio.gather(*(ck.cas(b"c%d" % i, b"1" if i % 2 else b"x", b"2")
                                       for i in range(100)))
        assert again == [i % 2 == 1 for i in range(100)]
        values = await asyncio.gather(*(ck.get(b"c%d" % i) for i in range(100)))
        assert values == [b"2" if i % 2 else b"1" for i in range(100)]


async def test_a_cas_whose_reply_is_lost_is_answered_as_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply of the first attempt is dropped after the server applied it;
    the clerk retries with the same seq and must get the same answer, though
    evaluating the CAS again would give the opposite one."""
    lost: list[str] = []
    original = AsyncClerk._call

    async def lose_first_write_reply(self: AsyncClerk, server: int, method: str,
                                     request: Any, timeout: float) -> Any:
        reply = await original(self, server, method, request, timeout)
        if method == "PutAppend" and request.op == kv_pb2.CAS and not lost:
            lost.append(request.key.decode())
            raise RpcError(Status.UNAVAILABLE, "reply lost (test)")
        return reply

    monkeypatch.setattr(AsyncClerk, "_call", lose_first_write_reply)
    async with cluster(tmp_path) as nodes, clerk_for(nodes) as ck:
        await leader_of(nodes)
        assert await ck.cas("fresh", None, "v") is True  # applied; reply lost; retried
        assert lost == ["fresh"] and await ck.get("fresh") == b"v"
        lost.clear()
        await ck.put("held", "x")
        assert await ck.cas("held", "y", "x") is False  # would swap if re-evaluated
        assert lost == ["held"] and await ck.get("held") == b"x"


def test_the_blocking_clerk_has_the_same_api(tmp_path: Path) -> None:
    async def serve(ready: asyncio.Event, done: asyncio.Event,
                    box: list[list[tuple[str, int]]]) -> None:
        async with cluster(tmp_path, limits=PAGED) as nodes:
            await leader_of(nodes)
            box.append(nodes[0].config.addresses)
            ready.set()
            await done.wait()

    import threading

    box: list[list[tuple[str, int]]] = []
    loop = asyncio.new_event_loop()
    ready, done = asyncio.Event(), asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(ready, done, box),))
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(ready.wait(), WAIT), loop).result()
        with Clerk(box[0], timeout=WAIT) as ck:
            ck.put(b"b\x00", b"\xff")
            ck.put("a", "1")
            assert ck.get(b"b\x00") == b"\xff" and ck.get("zz", None) is None
            assert ck.cas("a", "1", b"2") is True and ck.cas("a", None, "3") is False
            for i in range(6):
                ck.put(f"p/{i}", str(i))
            assert ck.scan() == [(b"a", b"2"), (b"b\x00", b"\xff")] + [
                (b"p/%d" % i, b"%d" % i) for i in range(6)]
            page = ck.scan_prefix("p/", limit=5)
            assert len(page) == 5 and page.next_start == b"p/5"
            assert ck.scan(page.next_start, prefix_end(b"p/")) == [(b"p/5", b"5")]
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(WAIT)
        loop.close()
