"""Shared pieces of the rpc tests: an echo service, a served provider, raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from rpc import RpcChannel, RpcError, RpcProvider, Status, Stub
from rpc.codec import NEED_DATA, Frame, FrameDecoder, encode
from rpc.rpc_pb2 import Header
from tests.rpc import rpc_test_echo_pb2 as pb

ECHO = pb.DESCRIPTOR.services_by_name["Echo"]
EchoRequest = pb.EchoRequest
EchoReply = pb.EchoReply

# Bound for every wait on an event in these tests.
WAIT = 5.0


class EchoImpl:
    """Echo with knobs: delay_ms sleeps, fail raises, seq comes back."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.started = asyncio.Event()  # some slow call is running
        self.cancelled = asyncio.Event()  # some slow call was cancelled
        self.cancel_count = 0

    async def Echo(self, request: pb.EchoRequest) -> pb.EchoReply:
        self.calls += 1
        if request.fail == "rpcerror":
            raise RpcError(Status.BAD_REQUEST, "handler says no")
        if request.fail == "wrongtype":
            return pb.EchoRequest()  # type: ignore[return-value]
        if request.fail:
            raise ValueError(request.fail)
        if request.delay_ms:
            self.in_flight += 1
            self.started.set()
            try:
                await asyncio.sleep(request.delay_ms / 1000)
            except asyncio.CancelledError:
                self.cancel_count += 1
                self.cancelled.set()
                raise
            finally:
                self.in_flight -= 1
        payload = b"r" * request.reply_size if request.reply_size else request.payload
        return pb.EchoReply(payload=payload, seq=request.seq)

    async def Other(self, request: pb.EchoRequest) -> pb.EchoReply:
        return pb.EchoReply(seq=request.seq + 1)


@asynccontextmanager
async def serving(
    impl: object | None = None, port: int = 0, **kwargs: Any
) -> AsyncIterator[RpcProvider]:
    provider = RpcProvider("127.0.0.1", port, **kwargs)
    provider.register(ECHO, impl or EchoImpl())
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


@asynccontextmanager
async def echo_stub(port: int, **kwargs: Any) -> AsyncIterator[Stub]:
    channel = RpcChannel("127.0.0.1", port, **kwargs)
    try:
        yield Stub(channel, ECHO)
    finally:
        await channel.close()


def request_frame(
    call_id: int,
    body: bytes,
    *,
    service: str = ECHO.full_name,
    method: str = "Echo",
    timeout_ms: int = 0,
) -> bytes:
    header = Header(call_id=call_id, service=service, method=method, timeout_ms=timeout_ms)
    return encode(header, body)


class RawPeer:
    """A hand-driven TCP client for feeding the provider arbitrary bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> Frame:
        while True:
            frame = self.decoder.next_frame()
            if frame is not NEED_DATA:
                return frame
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            if not data:
                raise ConnectionError("closed by server")
            self.decoder.receive_data(data)

    async def closed_by_server(self) -> bool:
        """True once the server closes (EOF or reset), within WAIT seconds."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), WAIT):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
