"""A peer message that cannot be encoded (over the frame limit) is dropped and
logged by the transport; it never reaches the drain loop as an error that
stops the node (issue 12). Raft treats it as lost and sends again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from raft.transport import RAFT_SERVICE, RaftService, RpcTransport
from raft.types import Entry, Message, MessageType
from rpc import Promise, RpcProvider

pytestmark = pytest.mark.timeout(30)


async def test_an_unencodable_message_is_dropped_and_the_next_one_delivered(
        caplog: pytest.LogCaptureFixture) -> None:
    received: list[Message] = []

    def handle(msg: Message) -> Promise[Message | None]:
        received.append(msg)
        answer: Promise[Message | None] = Promise()
        answer.set_result(None)
        return answer

    provider = RpcProvider("127.0.0.1", 0)
    provider.register(RAFT_SERVICE, RaftService(1, handle))
    await provider.start()
    transport = RpcTransport(0, {1: ("127.0.0.1", provider.port)}, deliver=lambda m: None,
                             max_frame_size=4096)
    try:
        # Connect first, so the send takes the synchronous path that used
        # to raise into the caller.
        transport.send(Message(MessageType.HEARTBEAT, 0, 1, term=1))
        async with asyncio.timeout(10):
            while not received:
                await asyncio.sleep(0.01)
        big = Message(MessageType.APPEND, 0, 1, term=1,
                      entries=(Entry(1, 1, b"x" * 8192),))
        with caplog.at_level(logging.ERROR, logger="raft.transport"):
            transport.send(big)  # must not raise
        assert any("AppendEntries to 1 (1 entries) dropped" in r.getMessage()
                   and "exceeds the limit" in r.getMessage() for r in caplog.records)
        small = Message(MessageType.APPEND, 0, 1, term=1, entries=(Entry(1, 1, b"y"),))
        transport.send(small)
        async with asyncio.timeout(10):
            while len(received) < 2:
                await asyncio.sleep(0.01)
        assert received[1].entries == small.entries
    finally:
        await transport.close()
        await provider.close()
