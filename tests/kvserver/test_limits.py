"""Request limits and field validation (issue 12): every request over a limit
or with a field the server cannot honour gets its documented error, is never
retried by the clerk, never acknowledged-and-dropped, and never stops a node."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import pytest

from clerk import AsyncClerk, BadRequest, ServerError, TooLarge
from kvserver import kv_pb2
from kvserver.limits import FRAME_OVERHEAD, Limits, LimitsError
from kvserver.server import KvNode
from kvserver.service import KvService
from rpc import returns_future
from tests.kvserver.inproc import WAIT, cluster, leader_of, put, stub_for

pytestmark = pytest.mark.timeout(90)

#: Small limits so the edges are cheap to reach.
SMALL = Limits(max_key_bytes=16, max_value_bytes=64, max_request_bytes=400, max_batch_ops=8)


def clerk_for(nodes: list[KvNode], **kwargs: Any) -> AsyncClerk:
    return AsyncClerk([(n.address.host, n.address.port) for n in nodes],
                      timeout=kwargs.pop("timeout", WAIT), **kwargs)


def assert_all_running(nodes: list[KvNode]) -> None:
    for node in nodes:
        assert node.node.failure is None, f"node {node.id} failed: {node.node.failure}"


# -- the limits themselves ----------------------------------------------------

def test_default_limits_fit_in_a_frame_and_bad_combinations_are_refused() -> None:
    defaults = Limits().validate()
    assert defaults.max_request_bytes + FRAME_OVERHEAD <= defaults.max_frame_bytes
    with pytest.raises(LimitsError, match="max_request_bytes=100 is below"):
        Limits(max_key_bytes=50, max_value_bytes=60, max_request_bytes=100).validate()
    with pytest.raises(LimitsError, match="does not fit in an RPC frame"):
        Limits(max_value_bytes=64 << 20).validate()
    assert Limits(max_value_bytes=8 << 20).validate().max_request_bytes == (8 << 20) + 511
    with pytest.raises(LimitsError, match="max_key_bytes must be at least 1"):
        Limits(max_key_bytes=0).validate()


def test_sizes_count_bytes() -> None:
    limits = Limits(max_key_bytes=4)
    assert limits.key_error(b"abcd") is None
    assert limits.key_error("abé".encode()) is None  # 4 bytes
    assert limits.key_error("abcé".encode()) == "key is 5 bytes, over the limit max_key_bytes=4"
    assert limits.key_error(b"\x00" * 5, "scan start") == (
        "scan start is 5 bytes, over the limit max_key_bytes=4")


# -- at the edges, through the clerk --------------------------------------------

async def test_keys_and_values_at_limit_minus_one_limit_and_plus_one(tmp_path: Path) -> None:
    async with cluster(tmp_path, limits=SMALL) as nodes, clerk_for(nodes) as ck:
        for size in (15, 16):
            await ck.put("k" * size, "v")
            assert await ck.get("k" * size) == b"v"
        for size in (63, 64):
            await ck.put("v", "x" * size)
            assert await ck.get("v") == b"x" * size
        with pytest.raises(TooLarge, match="max_key_bytes=16"):
            await ck.put("k" * 17, "v")
        with pytest.raises(TooLarge, match="max_key_bytes=16"):
            await ck.get("k" * 17)
        with pytest.raises(TooLarge, match="max_value_bytes=64"):
            await ck.put("v", "x" * 65)
        with pytest.raises(TooLarge, match="max_value_bytes=64"):
            await ck.put("v", "é" * 33)  # 66 bytes in 33 characters
        assert await ck.get("v") == b"x" * 64  # the refused puts left no trace
        assert_all_running(nodes)


async def test_appends_stop_at_the_value_limit_even_when_racing(tmp_path: Path) -> None:
    async with cluster(tmp_path, limits=SMALL) as nodes, clerk_for(nodes) as ck:
        await ck.append("a", "x" * 30)
        await ck.append("a", "x" * 30)
        with pytest.raises(TooLarge, match="APPEND would leave"):
            await ck.append("a", "x" * 5)  # 65 bytes
        await ck.append("a", "x" * 4)  # exactly 64
        assert await ck.get("a") == b"x" * 64
        # Many appends in flight at once: the leader's check on arrival sees
        # the value before any of them, so the state machine's check when
        # applying is what holds the limit.
        results = await asyncio.gather(*(ck.append("b", "y" * 10) for _ in range(20)),
                                       return_exceptions=True)
        done = sum(r is None for r in results)
        assert all(r is None or isinstance(r, TooLarge) for r in results), results
        assert done == 6 and await ck.get("b") == b"y" * 60
        assert_all_running(nodes)


async def test_a_value_just_under_the_frame_limit_is_refused_not_fatal(tmp_path: Path) -> None:
    # The repro of issue 12: with the default limits, a put whose frame just
    # fits killed the leader, then the next one.
    async with cluster(tmp_path) as nodes, clerk_for(nodes) as ck:
        limit = Limits().max_value_bytes
        await ck.put("edge", "v" * limit)
        with pytest.raises(TooLarge, match=f"max_value_bytes={limit}"):
            await ck.put("big", "v" * (limit + 1))
        with pytest.raises(TooLarge):
            await ck.put("big", "v" * (64 * 1024 * 1024 - 90))
        with pytest.raises(TooLarge, match="does not fit in an RPC frame"):
            await ck.put("big", "v" * (64 * 1024 * 1024))
        # A key grown by appends stays readable: the append past it is refused.
        with pytest.raises(TooLarge):
            await ck.append("edge", "v")
        assert len(await ck.get("edge")) == limit
        await ck.put("after", "ok")
        assert await ck.get("after") == b"ok"
        assert_all_running(nodes)


# -- fields the server cannot honour ---------------------------------------------

BAD_WRITES = {
    "seq 0": (put("k", "v", 0), "seq must be at least 1"),
    "client_id 0": (put("k", "v", 1, client_id=0), "client_id must not be 0"),
    "unknown op": (put("k", "v", 1, op=9), "unknown op 9"),
    "ack_seq above seq": (
        kv_pb2.PutAppendRequest(key=b"k", value=b"v", client_id=7, seq=3, ack_seq=4),
        "ack_seq 4 is above seq 3"),
    "delete with a value": (put("k", "v", 1, op=kv_pb2.DELETE), "a DELETE carries no value"),
}


@pytest.mark.parametrize("case", sorted(BAD_WRITES))
async def test_a_write_the_server_cannot_apply_is_refused_never_dropped(
        tmp_path: Path, case: str) -> None:
    request, why = BAD_WRITES[case]
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            reply = await stub.PutAppend(request, timeout=WAIT)
            assert reply.err == kv_pb2.BAD_REQUEST and why in reply.error
            got = await stub.Get(kv_pb2.GetRequest(key=b"k", client_id=7), timeout=WAIT)
            assert got.err == kv_pb2.NO_KEY
            # The client's session is not poisoned: its first real write applies.
            ok = await stub.PutAppend(put("k", "good", 1), timeout=WAIT)
            assert ok.err == kv_pb2.OK
            got = await stub.Get(kv_pb2.GetRequest(key=b"k"), timeout=WAIT)
            assert (got.err, got.value) == (kv_pb2.OK, b"good")
        assert_all_running(nodes)


async def test_a_batch_answers_each_refused_operation_in_its_place(tmp_path: Path) -> None:
    async with cluster(tmp_path, limits=SMALL) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            reply = await stub.Batch(kv_pb2.BatchRequest(
                writes=[put("a", "1", 1), put("b", "2", 0), put("c", "x" * 65, 2),
                        put("d", "4", 3)],
                gets=[kv_pb2.GetRequest(key=b"k" * 17), kv_pb2.GetRequest(key=b"a")],
            ), timeout=WAIT)
            assert reply.err == kv_pb2.OK
            assert [w.err for w in reply.writes] == [
                kv_pb2.OK, kv_pb2.BAD_REQUEST, kv_pb2.TOO_LARGE, kv_pb2.OK]
            assert [g.err for g in reply.gets] == [kv_pb2.TOO_LARGE, kv_pb2.OK]
            assert "seq must be at least 1" in reply.writes[1].error
            too_many = await stub.Batch(kv_pb2.BatchRequest(
                writes=[put(f"k{i}", "v", 10 + i) for i in range(9)]), timeout=WAIT)
            assert too_many.err == kv_pb2.BAD_REQUEST
            assert "max_batch_ops=8" in too_many.error and not too_many.writes
            too_big = await stub.Batch(kv_pb2.BatchRequest(
                writes=[put(f"k{i}", "v" * 60, 30 + i) for i in range(7)]), timeout=WAIT)
            assert too_big.err == kv_pb2.TOO_LARGE and "max_request_bytes=400" in too_big.error
            got = await stub.Get(kv_pb2.GetRequest(key=b"k0"), timeout=WAIT)
            assert got.err == kv_pb2.NO_KEY  # nothing of the refused batches applied
        assert_all_running(nodes)


async def test_the_clerk_splits_a_batch_the_server_finds_too_big(tmp_path: Path) -> None:
    async with cluster(tmp_path, limits=SMALL) as nodes, clerk_for(nodes) as ck:
        await ck.put("warm", "up")
        # 20 puts of ~70 bytes issued together: coalesced into batches over
        # 400 bytes, which the server refuses whole; each goes alone then.
        await asyncio.gather(*(ck.put(f"k{i:02}", "v" * 60) for i in range(20)))
        values = await asyncio.gather(*(ck.get(f"k{i:02}") for i in range(20)))
        assert values == [b"v" * 60] * 20
        assert_all_running(nodes)


async def test_the_clerk_does_not_retry_a_deterministic_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    @functools.wraps(KvService.Get)  # keeps the @returns_future mark
    @returns_future
    def broken(self: KvService, request: kv_pb2.GetRequest) -> Any:
        calls.append(request.key)
        raise RuntimeError("a bug")

    monkeypatch.setattr(KvService, "Get", broken)
    async with cluster(tmp_path) as nodes, clerk_for(nodes, timeout=10.0) as ck:
        await leader_of(nodes)
        start = time.monotonic()
        with pytest.raises(ServerError, match="HANDLER_ERROR"):
            await ck.get("k")
        assert time.monotonic() - start < 5.0
        assert len(calls) == 1  # one server, once; no retry loop
        with pytest.raises(BadRequest):  # nor a refused request
            await ck._until_done("PutAppend", put("k", "v", 0))
        assert_all_running(nodes)
