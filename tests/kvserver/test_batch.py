"""``KvServer.Batch`` and the clerk's coalescing, on an in-process cluster
(three ``KvNode``s: real TCP on 127.0.0.1, real files with fsync)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clerk import AsyncClerk, TooLarge
from clerk.client import MAX_BATCH, MAX_BATCH_BYTES
from kvserver import kv_pb2
from kvserver.service import KvService
from rpc import RpcError, Status
from tests.kvserver.inproc import WAIT, cluster, leader_of, put, stub_for

pytestmark = pytest.mark.timeout(60)


async def test_batch_answers_each_operation_in_request_order(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            first = await stub.Batch(kv_pb2.BatchRequest(
                writes=[put("a", "1", 1), put("b", "2", 2), put("a", "+", 3, op=kv_pb2.APPEND)],
                gets=[kv_pb2.GetRequest(key=b"missing")],
            ), timeout=WAIT)
            assert first.err == kv_pb2.OK
            assert [w.err for w in first.writes] == [kv_pb2.OK] * 3
            assert [g.err for g in first.gets] == [kv_pb2.NO_KEY]
            second = await stub.Batch(kv_pb2.BatchRequest(
                gets=[kv_pb2.GetRequest(key=k) for k in (b"b", b"missing", b"a")],
            ), timeout=WAIT)
            assert [(g.err, g.value) for g in second.gets] == [
                (kv_pb2.OK, b"2"), (kv_pb2.NO_KEY, b""), (kv_pb2.OK, b"1+")]
            assert not second.writes
            empty = await stub.Batch(kv_pb2.BatchRequest(), timeout=WAIT)
            assert (empty.err, len(empty.gets), len(empty.writes)) == (kv_pb2.OK, 0, 0)
            # The writes were one Raft entry each.
            assert leader.node.status().applied >= 3


async def test_a_retried_batch_applies_each_write_once(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        batch = kv_pb2.BatchRequest(writes=[
            put("log", "x", 1, op=kv_pb2.APPEND), put("log", "y", 2, op=kv_pb2.APPEND)])
        async with stub_for(leader) as stub:
            for _ in range(2):  # the first reply "lost": the clerk sends it again
                reply = await stub.Batch(batch, timeout=WAIT)
                assert [w.err for w in reply.writes] == [kv_pb2.OK, kv_pb2.OK]
            got = await stub.Batch(kv_pb2.BatchRequest(gets=[kv_pb2.GetRequest(key=b"log")]),
                                   timeout=WAIT)
        assert got.gets[0].value in (b"xy", b"yx") and len(got.gets[0].value) == 2


async def test_a_follower_refuses_the_whole_batch_with_a_hint(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        follower = next(n for n in nodes if n is not leader)
        async with asyncio.timeout(WAIT):  # the follower learns who leads
            while follower.node.leader != leader.id:
                await asyncio.sleep(0.01)
        async with stub_for(follower) as stub:
            reply = await stub.Batch(kv_pb2.BatchRequest(
                writes=[put("k", "v", 1)], gets=[kv_pb2.GetRequest(key=b"k")]), timeout=WAIT)
        assert (reply.err, reply.leader_hint) == (kv_pb2.WRONG_LEADER, leader.id)
        assert not reply.writes and not reply.gets


async def test_a_leader_without_quorum_answers_every_operation_not_ok(tmp_path: Path) -> None:
    async with cluster(tmp_path, request_timeout=0.2) as nodes:
        leader = await leader_of(nodes)
        for node in nodes:
            if node is not leader:
                await node.stop()
        async with stub_for(leader) as stub:
            reply = await stub.Batch(kv_pb2.BatchRequest(
                writes=[put("k", str(i), i + 1) for i in range(3)],
                gets=[kv_pb2.GetRequest(key=b"k")] * 2), timeout=WAIT)
    if reply.err == kv_pb2.OK:  # (else it had stepped down already: refused whole)
        assert len(reply.writes) == 3 and len(reply.gets) == 2
        errs = {r.err for r in [*reply.writes, *reply.gets]}
        assert errs <= {kv_pb2.TIMEOUT, kv_pb2.WRONG_LEADER}, errs
    else:
        assert reply.err == kv_pb2.WRONG_LEADER


def _counting_batches(calls: list[int]) -> Callable[[Any], Any]:
    original = KvService.Batch

    @functools.wraps(original)  # keeps the @returns_future mark
    def batch(self: KvService, request: kv_pb2.BatchRequest) -> Any:
        calls.append(len(request.gets) + len(request.writes))
        return original(self, request)

    return batch


async def test_one_clerks_concurrent_operations_travel_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(KvService, "Batch", _counting_batches(calls))
    workers = 2 * MAX_BATCH
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClerk(nodes[0].config.addresses, timeout=WAIT) as ck:
            await ck.put("warm", "up")  # alone: a plain PutAppend

            async def worker(w: int) -> None:
                for i in range(5):
                    await ck.append(f"k{w % 8}", f"{w}.{i};")
                    assert f"{w}.{i};".encode() in await ck.get(f"k{w % 8}")

            await asyncio.gather(*(worker(w) for w in range(workers)))
            values = [(await ck.get(f"k{k}")).decode() for k in range(8)]
    assert calls, "no Batch call was made"
    assert max(calls) <= MAX_BATCH
    assert sum(calls) > workers  # most operations went in batches
    # Every append landed exactly once.
    pieces = sorted(p for v in values for p in v.split(";") if p)
    assert pieces == sorted(f"{w}.{i}" for w in range(workers) for i in range(5))


def recording_clerk(n_servers: int) -> tuple[AsyncClerk, list[list[str]]]:
    """A clerk whose calls are recorded (the methods of each), not sent."""
    ck = AsyncClerk([("127.0.0.1", 1 + i) for i in range(n_servers)])
    sent: list[list[str]] = []
    ck._send_ops = lambda server, ops: sent.append([m for m, _, _, _ in ops])  # type: ignore[method-assign]
    return ck, sent


def a_get_and_a_put(loop: asyncio.AbstractEventLoop) -> list[Any]:
    return [("Get", kv_pb2.GetRequest(key=b"a"), loop.create_future(), 1),
            ("PutAppend", put("b", "1", 1), loop.create_future(), 1)]


async def test_a_mismatched_batch_reply_is_retried_operation_by_operation() -> None:
    ck, resent = recording_clerk(1)
    loop = asyncio.get_running_loop()
    ops = a_get_and_a_put(loop)
    call = loop.create_future()
    call.set_result(kv_pb2.BatchReply(
        gets=[kv_pb2.GetReply(value=b"x"), kv_pb2.GetReply()]).SerializeToString())
    ck._settle(0, ops, kv_pb2.BatchReply, call)
    assert resent == [["Get"], ["PutAppend"]]
    assert not any(op[2].done() for op in ops)

    refused = loop.create_future()
    refused.set_result(kv_pb2.BatchReply(
        err=kv_pb2.WRONG_LEADER, leader_hint=2).SerializeToString())
    ck._settle(0, ops, kv_pb2.BatchReply, refused)
    for _, _, future, _ in ops:
        assert (future.result().err, future.result().leader_hint) == (kv_pb2.WRONG_LEADER, 2)

    lone = [("Get", kv_pb2.GetRequest(key=b"a"), loop.create_future(), 1)]
    failed = loop.create_future()
    failed.set_exception(RpcError(Status.DEADLINE_EXCEEDED, "late"))
    ck._settle(0, lone, kv_pb2.GetReply, failed)
    exc = lone[0][2].exception()
    assert isinstance(exc, RpcError) and exc.status is Status.DEADLINE_EXCEEDED
    await ck.close()


def test_queued_operations_are_split_by_count_and_bytes() -> None:
    ck, sent = recording_clerk(1)
    loop = asyncio.new_event_loop()
    try:
        big = MAX_BATCH_BYTES // 3
        ck._queued[0] = [("PutAppend", None, loop.create_future(), big) for _ in range(4)]
        ck._queued[0] += [("Get", None, loop.create_future(), 10) for _ in range(MAX_BATCH + 5)]
        ck._send_queued(0)
    finally:
        loop.close()
    # 3 big ones fill a batch; the 4th starts the next, which takes Gets up
    # to MAX_BATCH operations.
    assert [len(methods) for methods in sent] == [3, MAX_BATCH, 6]


async def test_operations_too_large_for_one_frame_together_go_one_by_one(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        async with AsyncClerk(nodes[0].config.addresses, timeout=WAIT) as ck:
            await ck.put("warm", "up")
            for channel in ck._channels:
                channel.max_frame_size = 4096
            # Five 3000-byte values: each fits in a frame, no two together do.
            await asyncio.gather(*(ck.put(f"big{i}", str(i) * 3000) for i in range(5)))
            assert [len(await ck.get(f"big{i}")) for i in range(5)] == [3000] * 5
            # One that fits in no frame fails at once, as it would alone
            # (queued behind the first put, it went in a batch first).
            results = await asyncio.gather(
                ck.put("small", "y"), ck.put("huge", "x" * 5000), ck.put("s2", "z"),
                return_exceptions=True)
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], TooLarge)
            assert await ck.get("s2") == b"z" and await ck.get("huge") == b""


async def test_a_server_without_batch_gets_every_operation_alone() -> None:
    ck, resent = recording_clerk(2)
    loop = asyncio.get_running_loop()
    ops = a_get_and_a_put(loop)
    call = loop.create_future()
    call.set_exception(RpcError(Status.UNKNOWN_METHOD, "service kvserver.KvServer has no method"))
    ck._settle(1, ops, kv_pb2.BatchReply, call)
    assert resent == [["Get"], ["PutAppend"]]
    assert ck._batches == [True, False]  # that server only, from now on
    await ck.close()
