"""``KvServer.Scan`` and the CAS op through the service, on an in-process
cluster (three ``KvNode``s: real TCP on 127.0.0.1, real files with fsync),
with raw requests: what the wire promises, without a clerk in between."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kvserver import kv_pb2
from kvserver.limits import DEFAULT_SCAN_LIMIT, SCAN_PAIR_OVERHEAD, Limits
from tests.kvserver.inproc import WAIT, cluster, leader_of, put, stub_for

pytestmark = pytest.mark.timeout(60)

SMALL = Limits(max_key_bytes=16, max_value_bytes=64, max_request_bytes=400, max_batch_ops=64,
               max_scan_keys=5)


def cas(key: bytes, expected: bytes | None, new: bytes, seq: int,
        client_id: int = 7) -> kv_pb2.PutAppendRequest:
    request = put(key, new, seq, client_id=client_id, op=kv_pb2.CAS)
    if expected is not None:
        request.expected = expected
    return request


def pairs(reply: kv_pb2.ScanReply) -> list[tuple[bytes, bytes]]:
    return [(p.key, p.value) for p in reply.pairs]


async def fill(stub: Any, items: list[tuple[bytes, bytes]], first_seq: int = 1) -> None:
    reply = await stub.Batch(kv_pb2.BatchRequest(writes=[
        put(k, v, first_seq + i) for i, (k, v) in enumerate(items)]), timeout=WAIT)
    assert [w.err for w in reply.writes] == [kv_pb2.OK] * len(items)


def test_page_limits_are_derived_and_checked() -> None:
    limits = Limits().validate()
    assert limits.max_scan_bytes == limits.max_request_bytes
    assert limits.scan_page(0) == (DEFAULT_SCAN_LIMIT, limits.max_scan_bytes)
    assert limits.scan_page(7)[0] == 7
    assert limits.scan_page(1 << 31)[0] == limits.max_scan_keys
    with pytest.raises(ValueError, match="the largest pair could never be scanned"):
        Limits(max_scan_bytes=1000).validate()
    with pytest.raises(ValueError, match="max_scan_bytes=67108864 does not fit"):
        Limits(max_scan_bytes=64 << 20).validate()


async def test_scan_pages_through_a_range_with_binary_keys(tmp_path: Path) -> None:
    items = [(bytes([0, i]) if i % 2 else b"\xff" + bytes([i]), b"\x00\xff" * i)
             for i in range(12)]
    async with cluster(tmp_path, limits=SMALL) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            await fill(stub, items)
            # Limit 0: the default, here cut to max_scan_keys=5.
            first = await stub.Scan(kv_pb2.ScanRequest(), timeout=WAIT)
            assert first.err == kv_pb2.OK
            assert pairs(first) == sorted(items)[:5]
            assert first.more and first.next_start == sorted(items)[5][0]
            # Going on from next_start tiles the range; end is exclusive.
            end = b"\xff\x05"
            seen, start = [], b""
            while True:
                page = await stub.Scan(kv_pb2.ScanRequest(start=start, end=end, limit=2),
                                       timeout=WAIT)
                assert page.err == kv_pb2.OK and len(page.pairs) <= 2
                seen += pairs(page)
                if not page.more:
                    break
                start = page.next_start
            assert seen == [p for p in sorted(items) if p[0] < end]
            assert not page.next_start
            empty = await stub.Scan(kv_pb2.ScanRequest(start=b"\x01", end=b"\x02"), timeout=WAIT)
            assert (empty.err, len(empty.pairs), empty.more) == (kv_pb2.OK, 0, False)


async def test_a_scan_page_stays_within_its_byte_budget(tmp_path: Path) -> None:
    budget = 16 + 64 + 2 * SCAN_PAIR_OVERHEAD + 50  # just over one largest pair
    limits = Limits(max_key_bytes=16, max_value_bytes=64, max_request_bytes=1000,
                    max_scan_bytes=budget)
    items = [(b"k%02d" % i, bytes([i]) * 40) for i in range(10)]  # 3 + 40 + 16 each
    async with cluster(tmp_path, limits=limits) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            await fill(stub, items)
            await fill(stub, [(b"z" * 16, b"v" * 64)], first_seq=20)
            page = await stub.Scan(kv_pb2.ScanRequest(start=b"k", limit=100), timeout=WAIT)
            # (3 + 40 + 16) * 2 = 118 <= budget (162) < 177 = three pairs.
            assert pairs(page) == items[:2] and page.next_start == b"k02"
            assert page.ByteSize() <= budget
            largest = await stub.Scan(kv_pb2.ScanRequest(start=b"z"), timeout=WAIT)
            assert pairs(largest) == [(b"z" * 16, b"v" * 64)] and not largest.more


async def test_scan_bounds_longer_than_a_key_are_refused(tmp_path: Path) -> None:
    async with cluster(tmp_path, limits=SMALL) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            for request, what in ((kv_pb2.ScanRequest(start=b"s" * 17), "scan start"),
                                  (kv_pb2.ScanRequest(end=b"e" * 17), "scan end")):
                reply = await stub.Scan(request, timeout=WAIT)
                assert reply.err == kv_pb2.TOO_LARGE
                assert reply.error == f"{what} is 17 bytes, over the limit max_key_bytes=16"
            ok = await stub.Scan(kv_pb2.ScanRequest(start=b"s" * 16, end=b"e" * 16),
                                 timeout=WAIT)
            assert ok.err == kv_pb2.OK


async def test_only_a_leader_with_a_quorum_answers_a_scan(tmp_path: Path) -> None:
    async with cluster(tmp_path, request_timeout=0.3) as nodes:
        leader = await leader_of(nodes)
        follower = next(n for n in nodes if n is not leader)
        async with asyncio.timeout(WAIT):
            while follower.node.leader != leader.id:
                await asyncio.sleep(0.01)
        async with stub_for(follower) as stub:
            reply = await stub.Scan(kv_pb2.ScanRequest(), timeout=WAIT)
        assert (reply.err, reply.leader_hint) == (kv_pb2.WRONG_LEADER, leader.id)
        async with stub_for(leader) as stub:
            await fill(stub, [(b"a", b"1")])
            for node in nodes:
                if node is not leader:
                    await node.stop()
            # A leader cut off from its quorum cannot confirm it still leads
            # (ReadIndex): it never answers from its possibly stale state.
            reply = await stub.Scan(kv_pb2.ScanRequest(), timeout=WAIT)
        assert reply.err in (kv_pb2.TIMEOUT, kv_pb2.WRONG_LEADER) and not reply.pairs


async def test_cas_swaps_once_and_a_retry_gets_the_first_answer(tmp_path: Path) -> None:
    async with cluster(tmp_path, limits=SMALL) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            async def answer(request: kv_pb2.PutAppendRequest) -> tuple[int, bool]:
                reply = await stub.PutAppend(request, timeout=WAIT)
                return reply.err, reply.swapped

            absent = cas(b"k", None, b"\x00v1", 1)
            assert await answer(absent) == (kv_pb2.OK, True)
            stale = cas(b"k", b"nope", b"v2", 2)
            assert await answer(stale) == (kv_pb2.OK, False)
            assert await answer(cas(b"k", b"\x00v1", b"\xffv3", 3)) == (kv_pb2.OK, True)
            # Retries of seqs 1 and 2 (their replies "lost"): the first answers
            # again, though evaluated now both would be the opposite.
            await stub.PutAppend(put(b"k", b"nope", 4), timeout=WAIT)
            assert await answer(absent) == (kv_pb2.OK, True)
            assert await answer(stale) == (kv_pb2.OK, False)
            got = await stub.Get(kv_pb2.GetRequest(key=b"k"), timeout=WAIT)
            assert got.value == b"nope"
            # Many CAS of one client in one Batch: applied in order.
            batch = await stub.Batch(kv_pb2.BatchRequest(writes=[
                cas(b"c", None, b"1", 10), cas(b"c", None, b"2", 11),
                cas(b"c", b"1", b"3", 12), cas(b"c", b"3", b"4", 13)]), timeout=WAIT)
            assert [(w.err, w.swapped) for w in batch.writes] == [
                (kv_pb2.OK, True), (kv_pb2.OK, False), (kv_pb2.OK, True), (kv_pb2.OK, True)]


async def test_cas_requests_are_checked_like_puts(tmp_path: Path) -> None:
    async with cluster(tmp_path, limits=SMALL) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            async def refused(request: kv_pb2.PutAppendRequest) -> tuple[int, str]:
                reply = await stub.PutAppend(request, timeout=WAIT)
                return reply.err, reply.error

            err, why = await refused(cas(b"k" * 17, None, b"v", 1))
            assert err == kv_pb2.TOO_LARGE and "max_key_bytes=16" in why
            err, why = await refused(cas(b"k", None, b"v" * 65, 1))
            assert err == kv_pb2.TOO_LARGE and why.startswith("value is 65 bytes")
            err, why = await refused(cas(b"k", b"v" * 65, b"v", 1))
            assert err == kv_pb2.TOO_LARGE and why.startswith("expected value is 65 bytes")
            with_expected = put(b"k", b"v", 1)
            with_expected.expected = b"v"
            err, why = await refused(with_expected)
            assert err == kv_pb2.BAD_REQUEST and "only a CAS carries an expected value" in why
            got = await stub.Get(kv_pb2.GetRequest(key=b"k"), timeout=WAIT)
            assert got.err == kv_pb2.NO_KEY  # nothing refused was applied
            # The client's seq 1 was never recorded: a good request applies.
            ok = await stub.PutAppend(cas(b"k", None, b"v", 1), timeout=WAIT)
            assert (ok.err, ok.swapped) == (kv_pb2.OK, True)


async def test_a_cas_needs_key_value_and_expected_to_fit_in_a_request(tmp_path: Path) -> None:
    limits = Limits(max_key_bytes=16, max_value_bytes=64, max_request_bytes=100)
    async with cluster(tmp_path, limits=limits) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            reply = await stub.PutAppend(cas(b"k" * 16, b"e" * 40, b"v" * 45, 1), timeout=WAIT)
            assert reply.err == kv_pb2.TOO_LARGE and "max_request_bytes=100" in reply.error
            reply = await stub.PutAppend(cas(b"k" * 16, b"e" * 40, b"v" * 44, 2), timeout=WAIT)
            assert (reply.err, reply.swapped) == (kv_pb2.OK, False)
