"""Handlers marked ``@returns_future``: plain methods that answer now or with
an ``asyncio.Future`` or an ``rpc.Promise`` (the KV and Raft services' hot
path), over real sockets. Every test runs with both kinds."""

from __future__ import annotations

import asyncio

import pytest

from rpc import Promise, RpcError, RpcProvider, Status, returns_future
from tests.rpc.rpc_helpers import ECHO, WAIT, EchoReply, EchoRequest, echo_stub, serving
from tests.rpc.rpc_test_echo_pb2 import EchoRequest as EchoRequestType

Pending = asyncio.Future[EchoReply] | Promise[EchoReply]


@pytest.fixture(params=["future", "promise"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class FutureEcho:
    """Echo answering through futures (or promises) the test resolves by hand."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pending: dict[int, Pending] = {}
        self.arrived = asyncio.Event()
        self.cancelled = asyncio.Event()

    @returns_future
    def Echo(self, request: EchoRequestType) -> EchoReply | Pending:
        if request.fail == "now":
            return EchoReply(seq=request.seq)  # answered at once, no future
        if request.fail == "raise":
            raise RpcError(Status.BAD_REQUEST, "refused before any future")
        future: Pending = (asyncio.get_running_loop().create_future() if self.kind == "future"
                           else Promise())
        future.add_done_callback(lambda f: self.cancelled.set() if f.cancelled() else None)
        self.pending[request.seq] = future
        self.arrived.set()
        return future

    async def Other(self, request: EchoRequestType) -> EchoReply:
        return EchoReply(seq=request.seq + 1)


async def _next_pending(impl: FutureEcho, seq: int) -> Pending:
    async def arrived() -> None:
        while seq not in impl.pending:
            impl.arrived.clear()
            await impl.arrived.wait()

    await asyncio.wait_for(arrived(), WAIT)
    return impl.pending[seq]


async def test_immediate_answer_and_future_answers_out_of_order(loop_kind: str, kind: str) -> None:
    impl = FutureEcho(kind)
    async with serving(impl) as provider, echo_stub(provider.port) as stub:
        assert (await stub.Echo(EchoRequest(seq=7, fail="now"), timeout=WAIT)).seq == 7
        calls = [asyncio.ensure_future(stub.Echo(EchoRequest(seq=s), timeout=WAIT))
                 for s in (1, 2, 3)]
        futures = [await _next_pending(impl, s) for s in (1, 2, 3)]
        for s, f in zip((3, 1, 2), (futures[2], futures[0], futures[1]), strict=True):
            f.set_result(EchoReply(seq=s * 10))
        assert [(await c).seq for c in calls] == [10, 20, 30]
        # Async handlers of the same service still work alongside.
        assert (await stub.Other(EchoRequest(seq=1), timeout=WAIT)).seq == 2


async def test_errors_raised_or_set_on_the_future_reach_the_caller(kind: str) -> None:
    impl = FutureEcho(kind)
    async with serving(impl) as provider, echo_stub(provider.port) as stub:
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(fail="raise"), timeout=WAIT)
        assert info.value.status is Status.BAD_REQUEST
        assert "refused before any future" in info.value.message

        call = asyncio.ensure_future(stub.Echo(EchoRequest(seq=1), timeout=WAIT))
        (await _next_pending(impl, 1)).set_exception(ValueError("disk on fire"))
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.status is Status.HANDLER_ERROR
        assert "ValueError: disk on fire" in info.value.message

        call = asyncio.ensure_future(stub.Echo(EchoRequest(seq=2), timeout=WAIT))
        wrong = EchoRequest()  # not the declared response type
        (await _next_pending(impl, 2)).set_result(wrong)  # type: ignore[arg-type]
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.status is Status.HANDLER_ERROR

        # The connection kept serving through all of it.
        assert (await stub.Echo(EchoRequest(seq=3, fail="now"), timeout=WAIT)).seq == 3


async def test_deadline_cancels_the_future_and_answers_deadline_exceeded(kind: str) -> None:
    impl = FutureEcho(kind)
    async with serving(impl) as provider, echo_stub(provider.port) as stub:
        # Connected first: on a loaded machine, connecting alone could take
        # the 50 ms, and the request would never reach the server.
        assert (await stub.Echo(EchoRequest(seq=0, fail="now"), timeout=WAIT)).seq == 0
        with pytest.raises(RpcError) as info:
            await stub.Echo(EchoRequest(seq=1), timeout=0.05)
        assert info.value.status is Status.DEADLINE_EXCEEDED
        await asyncio.wait_for(impl.cancelled.wait(), WAIT)
        assert impl.pending[1].cancelled()


async def test_a_future_cancelled_by_the_handler_side_is_answered(kind: str) -> None:
    impl = FutureEcho(kind)
    async with serving(impl) as provider, echo_stub(provider.port) as stub:
        call = asyncio.ensure_future(stub.Echo(EchoRequest(seq=1), timeout=WAIT))
        (await _next_pending(impl, 1)).cancel()
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.status is Status.UNAVAILABLE
        assert "cancelled on server" in info.value.message


async def test_provider_close_cancels_pending_futures(kind: str) -> None:
    impl = FutureEcho(kind)
    provider_cm = serving(impl)
    provider = await provider_cm.__aenter__()
    async with echo_stub(provider.port) as stub:
        call = asyncio.ensure_future(stub.Echo(EchoRequest(seq=1), timeout=WAIT))
        future = await _next_pending(impl, 1)
        await provider_cm.__aexit__(None, None, None)
        assert future.cancelled()
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.status is Status.UNAVAILABLE


async def test_a_client_going_away_cancels_every_pending_future(kind: str) -> None:
    impl = FutureEcho(kind)
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
    async with serving(impl) as provider:
        async with echo_stub(provider.port) as stub:
            calls = [asyncio.ensure_future(stub.Echo(EchoRequest(seq=s), timeout=WAIT))
                     for s in (1, 2, 3)]
            futures = [await _next_pending(impl, s) for s in (1, 2, 3)]
        # The channel closed with the calls in flight: the server cancels them all.
        for call in calls:
            with pytest.raises(RpcError):
                await call

        async def all_cancelled() -> None:
            while not all(f.cancelled() for f in futures):
                await asyncio.sleep(0.005)

        await asyncio.wait_for(all_cancelled(), WAIT)
    assert errors == []


def test_a_plain_method_must_be_marked() -> None:
    class Unmarked:
        def Echo(self, request: EchoRequestType) -> EchoReply:
            return EchoReply()

        async def Other(self, request: EchoRequestType) -> EchoReply:
            return EchoReply()

    with pytest.raises(TypeError, match="Echo is not an async def"):
        RpcProvider().register(ECHO, Unmarked())
