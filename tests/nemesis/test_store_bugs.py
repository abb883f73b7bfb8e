"""Store bugs the nemesis membership runs found (issue 15 work, helper h4),
kept as failing tests (``xfail(strict=True)``: they flip to XPASS, and fail
the suite, once fixed; then drop the mark).

``RpcChannel`` keeps a dead connection for good when the server resets it
right after accepting: ``_connect`` stores the new connection in
``self._conn`` when ``create_connection`` returns, but if the reset was
already read, ``connection_lost`` ran first (``_connection_lost`` found
``self._conn`` still None and did nothing). From then on every call fails at
once with "connection lost" (``_call`` sees ``conn.lost``) and none
reconnects. A Raft leader whose channel to a follower hits this never
reaches it again: the follower stops at its last index until the leader
changes. The nemesis proxy does exactly this (accept, then reset when its
target is down, i.e. a follower restarting): with the membership runs'
end check "every member applied the same index" it showed as a member
stuck 20 000 entries behind (seed 1501 of ``make chaos``'s membership runs).
Clerks hit it too (plain asyncio, when the reset comes from another thread
or process: 177 of 200 calls failed on a kept dead connection in a quick
check): a clerk whose channel to the leader is stuck follows WRONG_LEADER
hints to it until its timeout (the membership runs' "hang: membership step
... (last: ... server 3: UNAVAILABLE: ...: connection lost)").
The fix belongs in ``RpcChannel._connect``: a connection already lost when
``create_connection`` returns is a failed attempt (not ``self._conn``)."""

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


@pytest.mark.xfail(strict=True, reason="rpc/channel.py: a connection reset before _connect "
                                       "resumes is kept as self._conn forever")
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
