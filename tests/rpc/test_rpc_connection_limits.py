"""Connections are a bounded resource: the provider's cap, the slots reserved
for a peer service, and the idle timeout (rpc/provider.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from examples import friend_pb2
from rpc import RpcChannel, RpcProvider, Stub
from tests.rpc.rpc_helpers import (
    ECHO,
    WAIT,
    EchoImpl,
    EchoRequest,
    RawPeer,
    echo_stub,
    request_frame,
    serving,
)

#: Plays the Raft peers' service: the one reserved slots are kept for.
PEER = friend_pb2.DESCRIPTOR.services_by_name["FriendService"]
REFUSING = "refusing connections"


class FriendImpl:
    async def GetFriendsList(
        self, request: friend_pb2.GetFriendsListRequest
    ) -> friend_pb2.GetFriendsListResponse:
        return friend_pb2.GetFriendsListResponse(friends=[b"peer"])


def peer_served(**kwargs: Any) -> RpcProvider:
    """A provider of the Echo (client) and peer services."""
    provider = RpcProvider("127.0.0.1", 0, reserved_service=PEER.full_name, **kwargs)
    provider.register(PEER, FriendImpl())
    provider.register(ECHO, EchoImpl())
    return provider


async def poll(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll a cheap condition; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def connect_admitted(provider: RpcProvider, n: int) -> list[RawPeer]:
    """n idle raw connections, returned once the provider holds them all."""
    start = provider.open_connections
    peers = [await RawPeer.connect(provider.port) for _ in range(n)]
    await poll(lambda: len(provider._connections) == start + n, f"{n} connections")
    return peers


async def assert_served(peer: RawPeer, call_id: int = 1) -> None:
    await peer.send(request_frame(call_id, EchoRequest(seq=call_id).SerializeToString()))
    frame = await peer.read_frame()
    assert frame.header.call_id == call_id and frame.header.status == 0


async def assert_closed_unanswered(peer: RawPeer, within: float = 1.0) -> None:
    """The server closes `peer` within `within` seconds without a byte sent."""
    start = time.monotonic()
    received = b""
    try:
        while data := await asyncio.wait_for(peer.reader.read(65536), WAIT):
            received += data
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert received == b""
    assert time.monotonic() - start < within
    await peer.close()


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(REFUSING)]


async def test_connection_over_the_cap_is_closed_at_once_and_logged_once(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpc.provider")
    async with serving(max_connections=2) as provider:
        admitted = await connect_admitted(provider, 2)
        extra = await RawPeer.connect(provider.port)
        # A request sent at once is never read: the socket is closed on accept.
        await extra.send(request_frame(1, EchoRequest(seq=1).SerializeToString()))
        await assert_closed_unanswered(extra)
        assert provider.refused_connections == 1
        assert provider.open_connections == 2
        lines = refusal_lines(caplog)
        assert len(lines) == 1 and "cap 2" in lines[0], lines
        for i, peer in enumerate(admitted):
            await assert_served(peer, i + 1)
            await peer.close()


async def test_a_flood_of_refusals_is_logged_once_per_second_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rpc.provider")
    async with serving(max_connections=1) as provider:
        (held,) = await connect_admitted(provider, 1)
        flood = [await RawPeer.connect(provider.port) for _ in range(30)]
        for peer in flood:
            await assert_closed_unanswered(peer)
        assert provider.refused_connections == 30
        assert len(refusal_lines(caplog)) == 1
        # The rest are summed up in one line when the second has passed.
        await poll(lambda: len(refusal_lines(caplog)) == 2, "the summary line", 3.0)
        assert "29 more" in refusal_lines(caplog)[1]
        await assert_served(held)
        await held.close()


async def test_a_slot_is_freed_when_a_client_disconnects(loop_kind: str) -> None:
    async with serving(max_connections=1) as provider:
        (first,) = await connect_admitted(provider, 1)
        await assert_closed_unanswered(await RawPeer.connect(provider.port))
        await first.close()
        await poll(lambda: provider.open_connections == 0, "the slot to be freed")
        (second,) = await connect_admitted(provider, 1)
        await assert_served(second)
        await second.close()


async def test_a_peer_gets_a_reserved_slot_when_clients_fill_the_cap(loop_kind: str) -> None:
    provider = peer_served(max_connections=2, reserved_connections=1)
    async with provider:
        clients = await connect_admitted(provider, 2)
        channel = RpcChannel("127.0.0.1", provider.port)
        try:
            reply = await Stub(channel, PEER).GetFriendsList(
                friend_pb2.GetFriendsListRequest(), timeout=WAIT)
            assert list(reply.friends) == [b"peer"]
            assert provider.open_connections == 3
            # Cap and reserve are both full now: the next one is refused.
            await assert_closed_unanswered(await RawPeer.connect(provider.port))
            # The peer's connection is kept and keeps working.
            reply = await Stub(channel, PEER).GetFriendsList(
                friend_pb2.GetFriendsListRequest(), timeout=WAIT)
            assert list(reply.friends) == [b"peer"]
        finally:
            await channel.close()
        for peer in clients:
            await peer.close()


async def test_a_reserved_slot_refuses_a_client_request_and_silence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rpc.provider")
    provider = peer_served(max_connections=1, reserved_connections=1, reserved_grace=0.2)
    async with provider:
        (client,) = await connect_admitted(provider, 1)
        # A client on the reserved slot: its Echo request is not answered.
        intruder = await RawPeer.connect(provider.port)
        await intruder.send(request_frame(1, EchoRequest(seq=1).SerializeToString()))
        await assert_closed_unanswered(intruder)
        # A silent one holds the reserved slot for the grace period only.
        silent = await RawPeer.connect(provider.port)
        await assert_closed_unanswered(silent, within=2.0)
        assert provider.refused_connections == 2
        await poll(lambda: provider.open_connections == 1, "the reserved slot to be freed")
        # The client on an ordinary slot is not affected by either.
        await assert_served(client)
        await client.close()
        assert any("reserved slot" in line for line in refusal_lines(caplog))


async def test_idle_timeout_closes_an_idle_client_only(loop_kind: str) -> None:
    provider = peer_served(idle_timeout=0.2)
    async with provider:
        peer_channel = RpcChannel("127.0.0.1", provider.port)
        try:
            await Stub(peer_channel, PEER).GetFriendsList(
                friend_pb2.GetFriendsListRequest(), timeout=WAIT)
            idle = await RawPeer.connect(provider.port)
            async with echo_stub(provider.port) as stub:
                # A call in flight for 3 idle timeouts: that connection stays.
                busy = asyncio.ensure_future(
                    stub.Echo(EchoRequest(seq=7, delay_ms=600), timeout=WAIT))
                await assert_closed_unanswered(idle, within=WAIT)
                assert (await busy).seq == 7
            # The peer has been silent for 3 idle timeouts and is still connected.
            assert peer_channel.connected
            assert any(c.is_peer for c in provider._connections)
        finally:
            await peer_channel.close()


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RpcProvider(max_connections=-1)
    with pytest.raises(ValueError):
        RpcProvider(reserved_connections=2)  # reserved for no service
    with pytest.raises(ValueError):
        RpcProvider(idle_timeout=0)
