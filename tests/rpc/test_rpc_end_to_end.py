"""Provider and channel over real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio

import pytest

from rpc import RpcChannel, RpcError, Status, Stub
from rpc.loop import loop_name
from tests.rpc.rpc_helpers import (
    ECHO,
    WAIT,
    EchoImpl,
    EchoReply,
    EchoRequest,
    echo_stub,
    serving,
)


async def test_one_call(loop_kind: str) -> None:
    assert loop_name() == loop_kind
    async with serving() as provider, echo_stub(provider.port) as stub:
        reply = await stub.Echo(EchoRequest(payload=b"hi", seq=9), timeout=WAIT)
        assert reply == EchoReply(payload=b"hi", seq=9)


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "tasks"])
async def test_thousand_concurrent_calls_on_one_connection(loop_kind: str, eager: bool) -> None:
    async with serving(eager=eager) as provider, echo_stub(provider.port) as stub:
        requests = [
            EchoRequest(payload=str(i).encode(), seq=i, delay_ms=i % 3) for i in range(1000)
        ]
        replies = await asyncio.gather(*(stub.Echo(r, timeout=WAIT) for r in requests))
        assert [(r.seq, r.payload) for r in replies] == [(q.seq, q.payload) for q in requests]
        assert len(provider._connections) == 1


async def test_responses_complete_out_of_order() -> None:
    async with serving() as provider, echo_stub(provider.port) as stub:
        order: list[int] = []

        async def call(seq: int, delay_ms: int) -> None:
            await stub.Echo(EchoRequest(seq=seq, delay_ms=delay_ms), timeout=WAIT)
            order.append(seq)

        # Sent in order 0..4, the slowest first: they must come back reversed.
        await asyncio.gather(*(call(i, 200 - 40 * i) for i in range(5)))
        assert order == [4, 3, 2, 1, 0]


async def test_deadline_exceeded_cancels_the_handler_and_channel_stays_usable() -> None:
    impl = EchoImpl()
    async with serving(impl) as provider, echo_stub(provider.port) as stub:
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(delay_ms=10_000), timeout=0.05)
        assert info.value.status is Status.DEADLINE_EXCEEDED
        # The remaining budget travelled as timeout_ms; the server cancels too.
        await asyncio.wait_for(impl.cancelled.wait(), WAIT)
        reply = await stub.Echo(EchoRequest(seq=2), timeout=WAIT)
        assert reply.seq == 2


async def test_handler_error_is_reported_and_server_keeps_serving() -> None:
    async with serving() as provider, echo_stub(provider.port) as stub:
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(fail="boom"), timeout=WAIT)
        assert info.value.status is Status.HANDLER_ERROR
        assert "ValueError: boom" in info.value.message
        assert (await stub.Echo(EchoRequest(seq=1), timeout=WAIT)).seq == 1


async def test_handler_may_raise_rpc_error_with_its_own_status() -> None:
    async with serving() as provider, echo_stub(provider.port) as stub:
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(fail="rpcerror"), timeout=WAIT)
        assert info.value.status is Status.BAD_REQUEST
        assert info.value.message == "handler says no"


async def test_handler_returning_the_wrong_type_is_a_handler_error() -> None:
    async with serving() as provider, echo_stub(provider.port) as stub:
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(fail="wrongtype"), timeout=WAIT)
        assert info.value.status is Status.HANDLER_ERROR
        assert "expected EchoReply" in info.value.message


async def test_unknown_service_and_method() -> None:
    async with serving() as provider:
        channel = RpcChannel("127.0.0.1", provider.port)
        try:
            with pytest.raises(RpcError) as info:
                await channel.call("no.Such", "Echo", EchoRequest(), EchoReply, timeout=WAIT)
            assert info.value.status is Status.UNKNOWN_SERVICE
            with pytest.raises(RpcError) as info:
                await channel.call(ECHO.full_name, "Nope", EchoRequest(), EchoReply, timeout=WAIT)
            assert info.value.status is Status.UNKNOWN_METHOD
            reply = await channel.call(
                ECHO.full_name, "Other", EchoRequest(seq=1), EchoReply, timeout=WAIT
            )
            assert reply.seq == 2
        finally:
            await channel.close()


async def test_connect_is_lazy() -> None:
    async with serving() as provider:
        channel = RpcChannel("127.0.0.1", provider.port)
        stub = Stub(channel, ECHO)
        await asyncio.sleep(0)
        assert not channel.connected and not provider._connections
        await stub.Echo(EchoRequest(), timeout=WAIT)
        assert channel.connected
        await channel.close()


async def test_pending_calls_fail_unavailable_when_the_server_goes_away(loop_kind: str) -> None:
    impl = EchoImpl()
    async with serving(impl) as provider, echo_stub(provider.port) as stub:
        calls = [
            asyncio.ensure_future(stub.Echo(EchoRequest(delay_ms=10_000), timeout=WAIT))
            for _ in range(10)
        ]
        await asyncio.wait_for(impl.started.wait(), WAIT)
        await provider.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RpcError) and r.status is Status.UNAVAILABLE for r in results)
        assert impl.cancel_count == impl.calls == 10  # close() cancelled every handler


async def test_server_restart_on_the_same_port_and_reconnect() -> None:
    impl = EchoImpl()
    async with serving(impl) as first:
        port = first.port
        channel = RpcChannel("127.0.0.1", port, backoff_initial=0.01, backoff_max=0.05)
        stub = Stub(channel, ECHO)
        assert (await stub.Echo(EchoRequest(seq=1), timeout=WAIT)).seq == 1
    # Server gone: calls fail with UNAVAILABLE, fast.
    with pytest.raises(RpcError) as info:
        await stub.Echo(EchoRequest(), timeout=WAIT)
    assert info.value.status is Status.UNAVAILABLE
    async with serving(impl, port=port):
        for _ in range(200):  # bounded poll: backoff is at most 50 ms here
            try:
                reply = await stub.Echo(EchoRequest(seq=3), timeout=WAIT)
                break
            except RpcError as exc:
                assert exc.status is Status.UNAVAILABLE
                await asyncio.sleep(0.01)
        else:
            pytest.fail("channel never reconnected")
        assert reply.seq == 3
    await channel.close()


async def test_calls_fail_fast_during_backoff() -> None:
    async with serving() as provider:
        port = provider.port
    channel = RpcChannel("127.0.0.1", port, backoff_initial=5.0, backoff_max=5.0)
    stub = Stub(channel, ECHO)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        t0 = loop.time()
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(), timeout=WAIT)
        assert info.value.status is Status.UNAVAILABLE
        assert loop.time() - t0 < 1.0
    assert "next attempt in" in info.value.message
    await channel.close()


async def test_closed_channel_fails_pending_and_later_calls() -> None:
    impl = EchoImpl()
    async with serving(impl) as provider:
        channel = RpcChannel("127.0.0.1", provider.port)
        stub = Stub(channel, ECHO)
        call = asyncio.ensure_future(stub.Echo(EchoRequest(delay_ms=10_000), timeout=WAIT))
        await asyncio.wait_for(impl.started.wait(), WAIT)
        await channel.close()
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.status is Status.UNAVAILABLE
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(), timeout=WAIT)
        assert info.value.status is Status.UNAVAILABLE
        # The server noticed the disconnect and cancelled the handler.
        await asyncio.wait_for(impl.cancelled.wait(), WAIT)


async def test_cancelling_a_call_leaves_the_channel_clean() -> None:
    impl = EchoImpl()
    async with serving(impl) as provider, echo_stub(provider.port) as stub:
        call = asyncio.ensure_future(stub.Echo(EchoRequest(delay_ms=100), timeout=WAIT))
        await asyncio.wait_for(impl.started.wait(), WAIT)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        conn = stub.channel._conn
        assert conn is not None and not conn.pending
        # The late reply is dropped; other calls are unaffected.
        replies = await asyncio.gather(
            *(stub.Echo(EchoRequest(seq=i, delay_ms=150), timeout=WAIT) for i in range(3))
        )
        assert [r.seq for r in replies] == [0, 1, 2]


async def test_provider_close_cancels_in_flight_handlers() -> None:
    impl = EchoImpl()
    provider_cm = serving(impl)
    provider = await provider_cm.__aenter__()
    async with echo_stub(provider.port) as stub:
        call = asyncio.ensure_future(stub.Echo(EchoRequest(delay_ms=10_000), timeout=WAIT))
        await asyncio.wait_for(impl.started.wait(), WAIT)
        await provider_cm.__aexit__(None, None, None)
        assert impl.cancelled.is_set() and impl.in_flight == 0
        with pytest.raises(RpcError):
            await call


async def test_deadline_when_the_server_never_answers() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with echo_stub(port) as stub:
            with pytest.raises(RpcError) as info:
                await stub.Echo(EchoRequest(), timeout=0.05)
            assert info.value.status is Status.DEADLINE_EXCEEDED
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_large_message_round_trip() -> None:
    async with serving() as provider, echo_stub(provider.port) as stub:
        payload = bytes(range(256)) * 8192  # 2 MiB: many TCP segments each way
        reply = await stub.Echo(EchoRequest(payload=payload), timeout=WAIT)
        assert reply.payload == payload
