"""Registration, stub construction and the loop helper: the API's edges."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import rpc
from examples import friend_pb2
from rpc import RpcChannel, RpcProvider, Stub, UnaryMethod, make_stub
from rpc.loop import loop_name, new_event_loop, run, uvloop_available
from tests.rpc.rpc_helpers import ECHO, EchoImpl, EchoReply, EchoRequest, serving

FRIEND = friend_pb2.DESCRIPTOR.services_by_name["FriendService"]


def test_public_api() -> None:
    for name in rpc.__all__:
        assert hasattr(rpc, name), name
    assert {"RpcProvider", "RpcChannel", "Stub", "RpcError", "Status", "run"} <= set(rpc.__all__)


def test_register_rejects_missing_and_sync_methods() -> None:
    class Incomplete:
        def Echo(self, request: EchoRequest) -> EchoReply:  # not async
            return EchoReply()

    provider = RpcProvider()
    with pytest.raises(TypeError) as info:
        provider.register(ECHO, Incomplete())
    message = str(info.value)
    assert "Incomplete cannot serve rpctest.Echo" in message
    assert "Echo is not an async def" in message and "missing method Other" in message


def test_register_rejects_duplicates_and_non_descriptors() -> None:
    provider = RpcProvider()
    provider.register(ECHO, EchoImpl.__new__(EchoImpl))
    with pytest.raises(ValueError, match="already registered"):
        provider.register(ECHO, EchoImpl.__new__(EchoImpl))
    with pytest.raises(TypeError, match="ServiceDescriptor"):
        provider.register(friend_pb2.DESCRIPTOR, object())  # type: ignore[arg-type]


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = RpcProvider().port


def test_stub_from_descriptor() -> None:
    channel = RpcChannel("127.0.0.1", 1)
    stub = make_stub(channel, FRIEND)
    assert isinstance(stub, Stub)
    method = stub.GetFriendsList
    assert isinstance(method, UnaryMethod)
    assert method.response_type is friend_pb2.GetFriendsListResponse
    assert method.request_type is friend_pb2.GetFriendsListRequest
    with pytest.raises(AttributeError, match="has no method 'Nope'"):
        _ = stub.Nope
    typed: UnaryMethod[friend_pb2.GetFriendsListRequest, friend_pb2.GetFriendsListResponse] = (
        UnaryMethod(channel, FRIEND.methods_by_name["GetFriendsList"],
                    friend_pb2.GetFriendsListResponse)
    )
    assert typed.full_name == "fixbug.FriendService.GetFriendsList"
    with pytest.raises(TypeError):
        UnaryMethod(channel, FRIEND.methods_by_name["GetFriendsList"], EchoReply)


async def test_stub_rejects_the_wrong_request_type() -> None:
    async with serving() as provider:
        channel = RpcChannel("127.0.0.1", provider.port)
        stub = Stub(channel, ECHO)
        with pytest.raises(TypeError, match="takes EchoRequest"):
            await stub.Echo(friend_pb2.GetFriendsListRequest(), timeout=1.0)
        await channel.close()


def test_run_with_and_without_uvloop() -> None:
    async def which() -> str:
        await asyncio.sleep(0)
        return loop_name()

    assert run(which(), use_uvloop=False) == "asyncio"
    expected = "uvloop" if uvloop_available() else "asyncio"
    assert run(which(), use_uvloop=True) == expected
    loop = new_event_loop(False)
    try:
        assert loop_name(loop) == "asyncio"
    finally:
        loop.close()


def test_works_without_uvloop_installed() -> None:
    # Hide uvloop from a child interpreter: the fallback must be clean.
    code = (
        "import sys; sys.modules['uvloop'] = None\n"
        "import asyncio, rpc.loop as L\n"
        "assert not L.uvloop_available() and not L.install_uvloop()\n"
        "async def main():\n"
        "    return L.loop_name()\n"
        "print(L.run(main()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "RPC_NO_UVLOOP": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "asyncio"


def test_rpc_no_uvloop_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPC_NO_UVLOOP", "1")

    async def which() -> str:
        return loop_name()

    assert run(which()) == "asyncio"


@pytest.mark.parametrize("promise", [False, True])
async def test_start_call_fast_path(loop_kind: str, promise: bool) -> None:
    """start_call: None until connected; then a plain future (or, asked,
    an rpc.Promise) of the reply body, resolved out of order like call();
    failures as RpcError; a cancelled call is forgotten."""
    impl = EchoImpl()
    async with serving(impl) as provider:
        channel = RpcChannel("127.0.0.1", provider.port)
        try:
            assert channel.start_call(ECHO.full_name, "Echo", EchoRequest(seq=1)) is None
            await channel.connect()
            slow = channel.start_call(ECHO.full_name, "Echo",
                                      EchoRequest(seq=1, delay_ms=200), timeout=5,
                                      promise=promise)
            fast = channel.start_call(ECHO.full_name, "Echo", EchoRequest(seq=2), timeout=5,
                                      promise=promise)
            assert slow is not None and fast is not None
            assert isinstance(fast, rpc.Promise) is promise
            assert EchoReply.FromString(await fast).seq == 2
            assert not slow.done()
            assert EchoReply.FromString(await slow).seq == 1
            failing = channel.start_call(ECHO.full_name, "Echo", EchoRequest(fail="boom"),
                                         promise=promise)
            assert failing is not None
            with pytest.raises(rpc.RpcError) as info:
                await failing
            assert info.value.status is rpc.Status.HANDLER_ERROR
            doomed = channel.start_call(ECHO.full_name, "Echo", EchoRequest(delay_ms=5000),
                                        promise=promise)
            assert doomed is not None
            await impl.started.wait()
            doomed.cancel()
            await asyncio.sleep(0)
            assert channel._conn is not None and not channel._conn.pending
        finally:
            await channel.close()
