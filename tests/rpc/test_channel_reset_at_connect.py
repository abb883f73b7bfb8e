"""A channel whose connection is reset right after the server accepted it
reconnects (found by the nemesis membership runs, seed 1501: the proxy
accepts, then resets when its target is down; ``_connect`` kept the dead
connection as ``self._conn`` because ``connection_lost`` had run before it
was stored, and every later call failed "connection lost": a leader never
reached that follower again)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from kvserver.launcher import free_ports
from rpc import RpcChannel, RpcError, Stub
from rpc.loop import run
from tests.rpc.rpc_helpers import ECHO, EchoRequest, serving

pytestmark = pytest.mark.timeout(30)


def _abort(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()  # RST at once, as the proxy when its target is down


def test_channel_reconnects_after_a_reset_right_after_accept() -> None:
    async def go() -> None:
        (port,) = free_ports(1)
        channel = RpcChannel("127.0.0.1", port, backoff_initial=0.01, backoff_max=0.05)
        stub = Stub(channel, ECHO)
        try:
            resetting = await asyncio.start_server(_abort, "127.0.0.1", port)
            for _ in range(20):
                with contextlib.suppress(RpcError):
                    await stub.Echo(EchoRequest(seq=1), timeout=0.5)
            resetting.close()
            await resetting.wait_closed()
            async with serving(port=port):
                last: Exception | None = None
                for _ in range(100):  # 100 tries, backoff at most 0.05 s: ample
                    try:
                        reply = await stub.Echo(EchoRequest(seq=7), timeout=0.5)
                    except RpcError as exc:
                        last = exc
                        await asyncio.sleep(0.02)
                    else:
                        assert reply.seq == 7
                        return
                raise AssertionError(f"the channel never reconnected: {last}")
        finally:
            await channel.close()

    run(go())  # uvloop, as the nodes run (the race did not show on asyncio)
