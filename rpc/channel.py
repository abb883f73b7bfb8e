"""The channel (client side): many concurrent calls over one TCP connection.

Calls are multiplexed: each gets a fresh call id, its request frame is queued
and all frames queued in one loop iteration go out in a single
`transport.write`; responses are matched to waiting futures by call id, in
whatever order they arrive.

Connection policy (chosen for Raft, where a dead peer must not slow anyone):

* Lazy: nothing happens until the first call (or an explicit `connect()`).
* A call that finds no connection starts a connect attempt, or joins the one
  under way, and waits for it within its own deadline.
* When an attempt fails, further attempts are held off by an exponential,
  jittered backoff (`backoff_initial` doubling up to `backoff_max`). Calls made
  during that window **fail fast** with UNAVAILABLE instead of queueing, so a
  caller that retries on its own (Raft heartbeats, the Clerk) is never stuck
  behind a dead address. The first call after the window tries again; a
  success resets the backoff.
* When the connection drops, every call in flight on it fails with
  UNAVAILABLE at once (it may or may not have run on the server). The next
  call reconnects immediately (a drop is not a failed attempt).
* `timeout=` is the whole budget of a call, connecting included; when it
  passes the call raises RpcError(DEADLINE_EXCEEDED) and a late response is
  dropped. The remaining budget is sent as `timeout_ms` so the server can
  stop working on it too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import random
from typing import Any, Literal, TypeVar, cast, overload

from google.protobuf.message import DecodeError, Message

from rpc._codec import (
    DEFAULT_MAX_FRAME_SIZE,
    NEED_DATA,
    FrameDecoder,
    encode_request,
    request_header_tail,
)
from rpc._deadlines import loop_deadlines
from rpc._outbox import Outbox
from rpc._promise import Promise
from rpc.errors import RemoteProtocolError, RpcError, Status

__all__ = ["RpcChannel"]

log = logging.getLogger("rpc.channel")

M = TypeVar("M", bound=Message)

_RESPONSE = 1  # rpc_pb2.RESPONSE
_OK = 0  # rpc_pb2.OK
_MAX_TIMEOUT_MS = 0xFFFFFFFF


def _status_of(code: int) -> Status:
    try:
        return Status(code)
    except ValueError:
        # A newer peer may know more codes; surface them as handler errors.
        return Status.HANDLER_ERROR


def parse_response(response_type: type[M], body: bytes) -> M:
    """Parse a reply body (as ``start_call`` delivers it); an undecodable
    one is the server's fault: ``RpcError(HANDLER_ERROR)``."""
    try:
        return response_type.FromString(body)
    except DecodeError as exc:
        raise RpcError(
            Status.HANDLER_ERROR, f"undecodable {response_type.__name__} response: {exc}"
        ) from None


class RpcChannel:
    """A client connection to one provider, shared by any number of calls.

    Use with `Stub(channel, descriptor)`, or directly through `call()`.
    Not thread-safe; bound to the event loop of its first use.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_frame_size = max_frame_size
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: _ClientConnection | None = None
        self._connect_task: asyncio.Task[_ClientConnection] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._next_id = 1
        self._closed = False
        self._tails: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None else "idle"
        if self._closed:
            state = "closed"
        return f"<RpcChannel {self.host}:{self.port} {state}>"

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # -- calls ----------------------------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
    ) -> M:
        """Call `service`/`method` (full service name, method name) and parse the reply."""
        tail = self._tail(service, method)
        body = await self._call(tail, request.SerializeToString(), timeout)
        return parse_response(response_type, body)

    def _tail(self, service: str, method: str) -> bytes:
        key = (service, method)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = request_header_tail(service, method)
        return tail

    @overload
    def start_call(
        self, service: str, method: str, request: Message, *,
        timeout: float | None = ..., promise: Literal[False] = ...,
    ) -> asyncio.Future[bytes] | None: ...

    @overload
    def start_call(
        self, service: str, method: str, request: Message, *,
        timeout: float | None = ..., promise: Literal[True],
    ) -> Promise[bytes] | None: ...

    def start_call(
        self, service: str, method: str, request: Message, *,
        timeout: float | None = None, promise: bool = False,
    ) -> asyncio.Future[bytes] | Promise[bytes] | None:
        """Send a request now and return the future of its raw reply body,
        without a coroutine or Task: for callers that send many small calls
        and handle replies in callbacks (the Raft transport). Returns None
        when the connection is not up (or is paused for back-pressure): use
        ``call()``, which connects and waits. The future fails with
        ``RpcError`` as ``call()`` would; parse the body with
        ``parse_response``. With ``promise=True`` it is an ``rpc.Promise``:
        its callbacks run as soon as the reply is read, inside the
        connection's ``data_received``, instead of a loop iteration later."""
        conn = self._conn
        if conn is None or conn.paused or conn.lost or self._closed:
            return None
        return self._send(conn, self._tail(service, method), request.SerializeToString(),
                          timeout, promise)

    def _send(
        self, conn: _ClientConnection, tail: bytes, body: bytes, timeout: float | None,
        promise: bool = False,
    ) -> asyncio.Future[bytes] | Promise[bytes]:
        call_id = self._next_id
        self._next_id = call_id + 1
        if timeout is None:
            timeout_ms = 0
        else:
            timeout_ms = min(max(math.ceil(timeout * 1000.0), 1), _MAX_TIMEOUT_MS)
        # Raises LocalProtocolError if the request is above the frame limit.
        frame = encode_request(call_id, tail, timeout_ms, body, self.max_frame_size)
        fut: asyncio.Future[bytes] | Promise[bytes] = (
            Promise() if promise else conn.loop.create_future())
        conn.pending[call_id] = fut
        conn.outbox.send(frame)
        if timeout is not None:
            conn.deadlines.add(timeout, (conn.expire, (call_id, timeout)))
        # Cancellation by the caller: forget the call (a late reply is dropped).
        fut.add_done_callback(lambda f: conn.pending.pop(call_id, None) if f.cancelled() else None)
        return fut

    async def _call(self, tail: bytes, body: bytes, timeout: float | None) -> bytes:
        """Send one request (header tail precomputed per method); the reply body."""
        conn = self._conn
        if conn is None or self._loop is None:
            conn, timeout = await self._connect_for_call(timeout)
        if conn.paused:
            await conn.wait_writable()
        if conn.lost:
            self._connection_lost(conn)  # the next call connects again
            raise RpcError(Status.UNAVAILABLE, f"{self.host}:{self.port}: connection lost")
        return await self._send(conn, tail, body, timeout)

    # -- connection management --------------------------------------------------

    async def connect(self, timeout: float | None = None) -> None:
        """Connect now (calls do this lazily). Raises RpcError(UNAVAILABLE) on failure."""
        await self._connect_for_call(timeout)

    async def _connect_for_call(
        self, timeout: float | None
    ) -> tuple[_ClientConnection, float | None]:
        """Get a connection, starting or joining an attempt; the remaining timeout."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise RpcError(Status.UNAVAILABLE, "channel is closed")
        conn = self._conn
        if conn is not None:
            return conn, timeout
        task = self._connect_task
        if task is None:
            wait = self._retry_at - loop.time()
            if wait > 0:
                raise RpcError(
                    Status.UNAVAILABLE,
                    f"cannot reach {self.host}:{self.port}: {self._last_error} "
                    f"(next attempt in {wait:.2f} s)",
                )
            task = self._connect_task = loop.create_task(self._connect())
            task.add_done_callback(_consume_exception)
        start = loop.time()
        # shield: one caller giving up must not cancel the attempt others share.
        try:
            conn = await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise RpcError(
                Status.DEADLINE_EXCEEDED,
                f"not connected to {self.host}:{self.port} within {timeout:g} s",
            ) from None
        if timeout is not None:
            timeout = max(timeout - (loop.time() - start), 0.001)
        return conn, timeout

    async def _connect(self) -> _ClientConnection:
        loop = self._loop
        assert loop is not None
        try:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _ClientConnection(self, loop), self.host, self.port
                    ),
                    self.connect_timeout,
                )
                if conn.lost:
                    # Reset between accept and our resuming here (a proxy
                    # whose target is down does that): connection_lost ran
                    # before this was our connection. Keeping it would fail
                    # every call for good; it is a failed attempt.
                    raise ConnectionResetError(errno.ECONNRESET, "connection reset at connect")
            except (OSError, TimeoutError) as exc:
                self._failures += 1
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (self._failures - 1))
                # Equal jitter: spread reconnect storms but keep a floor.
                delay = delay / 2 + self._rng.uniform(0, delay / 2)
                self._retry_at = loop.time() + delay
                reason = (
                    "connect timed out" if isinstance(exc, TimeoutError) else
                    (exc.strerror or str(exc))
                )
                self._last_error = reason
                log.debug("connect to %s:%d failed: %s", self.host, self.port, reason)
                raise RpcError(
                    Status.UNAVAILABLE, f"cannot reach {self.host}:{self.port}: {reason}"
                ) from None
        finally:
            self._connect_task = None
        if self._closed:
            conn.abort("channel closed")
            raise RpcError(Status.UNAVAILABLE, "channel is closed")
        self._failures = 0
        self._retry_at = 0.0
        self._conn = conn
        log.debug("connected to %s:%d", self.host, self.port)
        return conn

    def _connection_lost(self, conn: _ClientConnection) -> None:
        if self._conn is conn:
            self._conn = None

    def flush(self) -> None:
        """Write the requests sent in this loop iteration now rather than at
        its end (a caller about to block, or to do long work, calls this)."""
        conn = self._conn
        if conn is not None:
            conn.outbox.flush()

    async def close(self) -> None:
        """Fail pending calls with UNAVAILABLE and close the connection."""
        self._closed = True
        task = self._connect_task
        if task is not None:
            task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort("channel closed")
            await conn.closed

    async def __aenter__(self) -> RpcChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _consume_exception(task: asyncio.Task[Any]) -> None:
    # Every waiter may have timed out; mark the failure as seen so asyncio
    # does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class _ClientConnection(asyncio.Protocol):
    """The protocol object of one connection: frames in, futures resolved."""

    def __init__(self, channel: RpcChannel, loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self._loop = self.loop = loop
        self._decoder = FrameDecoder(channel.max_frame_size)
        self._transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[bytes] | Promise[bytes]] = {}
        self.outbox = Outbox(loop)
        self.paused = False
        self.lost = False
        self._writable: asyncio.Future[None] | None = None
        self._lost_reason = "connection lost"
        self.closed: asyncio.Future[None] = loop.create_future()
        # The loop's shared deadline slots. Items are (call_id, timeout), not
        # futures: a finished call's future must not stay alive until its
        # deadline slot fires. Call ids are never reused on a channel, so
        # the id alone identifies the call.
        self.deadlines = loop_deadlines(loop)

    def expire(self, item: tuple[int, float]) -> None:
        call_id, timeout = item
        fut = self.pending.pop(call_id, None)  # (emptied by connection_lost)
        if fut is not None and not fut.done():
            fut.set_exception(
                RpcError(Status.DEADLINE_EXCEEDED, f"no response within {timeout:g} s")
            )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance.
        self._transport = self.outbox.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.receive_data(data)
        pending = self.pending
        try:
            while True:
                frame = decoder.next_frame()
                if frame is NEED_DATA:
                    return
                header = frame.header
                if header.kind != _RESPONSE:
                    raise RemoteProtocolError("received a request frame on a channel")
                fut = pending.pop(header.call_id, None)
                if fut is None or fut.done():
                    continue  # timed out or cancelled: drop the late reply
                status = header.status
                if status == _OK:
                    fut.set_result(frame.body)
                else:
                    fut.set_exception(RpcError(_status_of(status), header.error))
        except RemoteProtocolError as exc:
            log.warning("closing connection to %s:%d: %s", self._channel.host,
                        self._channel.port, exc)
            self.abort(f"protocol error from server: {exc}")

    def abort(self, reason: str) -> None:
        self._lost_reason = reason
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._channel._connection_lost(self)
        reason = self._lost_reason
        if exc is not None and reason == "connection lost":
            reason = f"connection lost: {exc}"
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(
                    RpcError(
                        Status.UNAVAILABLE,
                        f"{self._channel.host}:{self._channel.port}: {reason}",
                    )
                )
        self.outbox.clear()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost fails what is pending

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def wait_writable(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()
        await self._writable
