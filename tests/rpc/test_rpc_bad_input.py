"""Whatever a peer sends, the provider survives and keeps serving others."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from rpc import RpcError, Status
from rpc.codec import encode
from rpc.rpc_pb2 import RESPONSE, Header
from tests.rpc.rpc_helpers import (
    WAIT,
    EchoImpl,
    EchoReply,
    EchoRequest,
    RawPeer,
    echo_stub,
    request_frame,
    serving,
)


async def assert_still_serving(port: int) -> None:
    async with echo_stub(port) as stub:
        assert (await stub.Echo(EchoRequest(seq=5), timeout=WAIT)).seq == 5


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage: ~1 GiB length prefix, refused
        b"\xff\xff\xff\xff",  # 4 GiB length prefix: refused on these 4 bytes alone
        struct.pack(">I", 5) + b"\x04\xff\xff\xff\xff",  # undecodable header
        struct.pack(">I", 3) + b"\x09ab",  # header longer than the frame
        struct.pack(">I", 0),  # empty frame
        encode(Header(kind=RESPONSE, call_id=1), b""),  # a response sent to a server
    ],
    ids=["garbage", "4gib-prefix", "bad-header", "header-overflow", "empty", "response-kind"],
)
async def test_protocol_violation_closes_that_connection_only(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving() as provider:
        peer = await RawPeer.connect(provider.port)
        await peer.send(data)
        assert await peer.closed_by_server()
        await peer.close()
        await assert_still_serving(provider.port)
    assert any("closing connection" in r.getMessage() for r in caplog.records)


async def test_4gib_prefix_is_refused_without_waiting_for_the_payload() -> None:
    async with serving() as provider:
        peer = await RawPeer.connect(provider.port)
        # A good call first on the same connection, then the huge prefix.
        await peer.send(request_frame(1, EchoRequest(seq=1).SerializeToString()))
        assert (await peer.read_frame()).header.call_id == 1
        await peer.send(b"\xff\xff\xff\xfe" + b"\x00" * 100)
        assert await peer.closed_by_server()
        await peer.close()
        assert provider._connections == set() or all(
            c._decoder.buffered < 1000 for c in provider._connections
        )


async def test_truncated_frame_then_close(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rpc.provider")
    async with serving() as provider:
        peer = await RawPeer.connect(provider.port)
        frame = request_frame(1, EchoRequest(seq=1).SerializeToString())
        await peer.send(frame[: len(frame) - 3])
        await peer.close()
        await assert_still_serving(provider.port)
        for _ in range(100):  # bounded poll for the server's connection_lost
            if not any("inside a frame" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.01)
        assert any("inside a frame" in r.getMessage() for r in caplog.records)


async def test_undecodable_body_is_bad_request_and_connection_stays() -> None:
    async with serving() as provider:
        peer = await RawPeer.connect(provider.port)
        await peer.send(request_frame(1, b"\xff\xff\xff\xff"))
        frame = await peer.read_frame()
        assert frame.header.call_id == 1 and frame.header.kind == RESPONSE
        assert frame.header.status == Status.BAD_REQUEST
        assert "cannot decode" in frame.header.error
        await peer.send(request_frame(2, EchoRequest(seq=2).SerializeToString()))
        frame = await peer.read_frame()
        assert frame.header.status == Status.OK
        assert EchoReply.FromString(frame.body).seq == 2
        await peer.close()


@pytest.mark.parametrize(
    ("service", "method", "status"),
    [
        ("nope.Service", "Echo", Status.UNKNOWN_SERVICE),
        ("rpctest.Echo", "Nope", Status.UNKNOWN_METHOD),
        ("", "", Status.UNKNOWN_SERVICE),
    ],
)
async def test_unknown_names_get_a_status(service: str, method: str, status: Status) -> None:
    async with serving() as provider:
        peer = await RawPeer.connect(provider.port)
        await peer.send(request_frame(7, b"", service=service, method=method))
        frame = await peer.read_frame()
        assert frame.header.call_id == 7 and frame.header.status == status
        await peer.close()


async def test_pipelined_requests_in_one_write_and_duplicate_call_id() -> None:
    async with serving() as provider:
        peer = await RawPeer.connect(provider.port)
        slow = EchoRequest(seq=1, delay_ms=300).SerializeToString()
        await peer.send(
            request_frame(1, slow)
            + request_frame(1, slow)  # same id while the first is in flight
            + request_frame(2, EchoRequest(seq=2).SerializeToString())
        )
        frames = [await peer.read_frame() for _ in range(3)]
        by_status = sorted((f.header.status, f.header.call_id) for f in frames)
        assert by_status == [(Status.OK, 1), (Status.OK, 2), (Status.BAD_REQUEST, 1)]
        await peer.close()


async def test_server_side_deadline_from_timeout_ms() -> None:
    impl = EchoImpl()
    async with serving(impl) as provider:
        peer = await RawPeer.connect(provider.port)
        body = EchoRequest(delay_ms=10_000).SerializeToString()
        await peer.send(request_frame(3, body, timeout_ms=30))
        frame = await peer.read_frame()
        assert frame.header.status == Status.DEADLINE_EXCEEDED
        assert impl.cancelled.is_set()
        await peer.close()


async def test_silent_peer_does_not_disturb_others() -> None:
    async with serving() as provider:
        silent = await RawPeer.connect(provider.port)
        await assert_still_serving(provider.port)
        await silent.close()


async def test_idle_timeout_closes_silent_peers() -> None:
    async with serving(idle_timeout=0.1) as provider:
        silent = await RawPeer.connect(provider.port)
        assert await silent.closed_by_server()
        await silent.close()
        await assert_still_serving(provider.port)


async def test_idle_timeout_spares_connections_with_calls_in_flight() -> None:
    async with serving(idle_timeout=0.05) as provider, echo_stub(provider.port) as stub:
        reply = await stub.Echo(EchoRequest(seq=4, delay_ms=250), timeout=WAIT)
        assert reply.seq == 4


async def test_client_disconnecting_mid_call() -> None:
    impl = EchoImpl()
    async with serving(impl) as provider:
        peer = await RawPeer.connect(provider.port)
        await peer.send(request_frame(1, EchoRequest(delay_ms=10_000).SerializeToString()))
        await asyncio.wait_for(impl.started.wait(), WAIT)
        await peer.close()
        await asyncio.wait_for(impl.cancelled.wait(), WAIT)
        await assert_still_serving(provider.port)


async def test_client_disconnecting_before_a_fast_reply_is_written() -> None:
    async with serving() as provider:
        for _ in range(20):
            peer = await RawPeer.connect(provider.port)
            peer.writer.write(request_frame(1, EchoRequest(seq=1).SerializeToString()))
            peer.writer.transport.abort()
        await assert_still_serving(provider.port)


async def test_oversized_request_is_a_local_error_for_the_caller() -> None:
    from rpc import LocalProtocolError

    async with serving() as provider, echo_stub(provider.port, max_frame_size=1000) as stub:
        with pytest.raises(LocalProtocolError):
            await stub.Echo(EchoRequest(payload=b"x" * 2000), timeout=WAIT)
        assert (await stub.Echo(EchoRequest(seq=1), timeout=WAIT)).seq == 1


async def test_oversized_response_becomes_handler_error() -> None:
    async with serving(max_frame_size=1000) as provider, echo_stub(provider.port) as stub:
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(reply_size=2000), timeout=WAIT)
        assert info.value.status is Status.HANDLER_ERROR
        assert "exceeds the limit" in info.value.message
        assert (await stub.Echo(EchoRequest(seq=1), timeout=WAIT)).seq == 1


async def test_client_that_does_not_read_gets_backpressure(loop_kind: str) -> None:
    async with serving() as provider:
        peer = await RawPeer.connect(provider.port)
        peer.writer.transport.pause_reading()  # a client that stops reading
        big = EchoRequest(reply_size=1 << 20).SerializeToString()
        n = 16  # 16 MiB of replies: more than loopback socket buffers hold
        peer.writer.write(b"".join(request_frame(i + 1, big) for i in range(n)))
        (conn,) = provider._connections
        transport = conn._transport
        assert transport is not None
        for _ in range(500):  # bounded poll: the server stops reading requests
            if not transport.is_reading():
                break
            await asyncio.sleep(0.01)
        assert not transport.is_reading()
        peer.writer.transport.resume_reading()
        ids = sorted([(await peer.read_frame()).header.call_id for _ in range(n)])
        assert ids == list(range(1, n + 1))
        assert transport.is_reading()
        await peer.close()


async def test_disconnect_mid_call_makes_no_noise(caplog: pytest.LogCaptureFixture) -> None:
    impl = EchoImpl()
    async with serving(impl) as provider:
        for _ in range(5):
            peer = await RawPeer.connect(provider.port)
            await peer.send(request_frame(1, EchoRequest(delay_ms=10_000).SerializeToString()))
            await asyncio.wait_for(impl.started.wait(), WAIT)
            await peer.close()
        for _ in range(200):  # bounded poll until every handler was cancelled
            if impl.cancel_count == 5:
                break
            await asyncio.sleep(0.01)
        assert impl.cancel_count == 5
        await assert_still_serving(provider.port)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
