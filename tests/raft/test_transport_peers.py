"""``RpcTransport.set_peers``: the peer set follows the membership. A new
peer is reachable at once, a moved peer at its new address, a removed one
still for ``retire_grace`` seconds (it must hear the commit of its own
removal) and then not at all; this node's own id is never a peer."""

from __future__ import annotations

import asyncio

import pytest

from raft.membership import parse_address
from raft.transport import RAFT_SERVICE, RaftService, RpcTransport
from raft.types import Message, MessageType
from rpc import Promise, RpcProvider

pytestmark = pytest.mark.timeout(30)


async def test_set_peers_adds_moves_and_retires() -> None:
    received: dict[str, list[int]] = {"a": [], "b": []}

    def provider_for(name: str, node: int) -> RpcProvider:
        def handle(msg: Message) -> Promise[Message | None]:
            received[name].append(msg.term)
            answer: Promise[Message | None] = Promise()
            answer.set_result(None)
            return answer

        provider = RpcProvider("127.0.0.1", 0)
        provider.register(RAFT_SERVICE, RaftService(node, handle))
        return provider

    a, b = provider_for("a", 1), provider_for("b", 1)
    await a.start()
    await b.start()
    transport = RpcTransport(0, {0: ("127.0.0.1", 1)}, deliver=lambda m: None,
                             retire_grace=0.2)

    async def arrives(name: str, term: int) -> None:
        transport.send(Message(MessageType.HEARTBEAT, 0, 1, term=term))
        async with asyncio.timeout(10):
            while term not in received[name]:
                await asyncio.sleep(0.01)

    try:
        assert transport.peers == {}  # its own id is never a peer
        transport.set_peers({0: ("127.0.0.1", 1), 1: ("127.0.0.1", a.port)})
        assert transport.peers == {1: ("127.0.0.1", a.port)}
        await arrives("a", 1)
        transport.set_peers({1: ("127.0.0.1", b.port)})  # moved
        await arrives("b", 2)
        transport.set_peers({})  # removed: still reachable for a grace period
        assert transport.peers == {}
        await arrives("b", 3)
        async with asyncio.timeout(10):
            while transport._channel(1) is not None:
                await asyncio.sleep(0.01)
        transport.send(Message(MessageType.HEARTBEAT, 0, 1, term=4))  # dropped, logged
        transport.set_peers({1: ("127.0.0.1", a.port)})  # back, as a new peer
        await arrives("a", 5)
        assert 4 not in received["a"] + received["b"]
    finally:
        await transport.close()
        await a.close()
        await b.close()


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("db-1.example:1", ("db-1.example", 1)),
    ("[::1]:65535", ("::1", 65535)),
])
def test_parse_address(text: str, parsed: tuple[str, int]) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize(("text", "problem"), [
    ("127.0.0.1", "not HOST:PORT"), (":80", "bad host"), ("h:0", "not 1-65535"),
    ("h:65536", "not 1-65535"), ("h:x", "not HOST:PORT"), ("::1:80", "in brackets"),
    ("a b:80", "bad host"), ("h:-1", "not HOST:PORT"),
])
def test_parse_address_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_address(text)
