"""The provider (server): serves registered protobuf services over TCP.

One `asyncio.Protocol` per connection (not streams: a protocol's
`data_received` parses every frame of a chunk in one go without a reader
task per connection). Each request runs its handler *eagerly*: the handler
coroutine is stepped right inside `data_received`, and only if it suspends
(awaits something not yet done) is it wrapped in a Task. Handlers that answer
from memory therefore cost no Task and no extra loop iteration: feeding
pipelined echo requests to a connection in memory, eager dispatch handled
1.5x (asyncio) to 2.2x (uvloop) the requests per CPU second of a Task per
call. `RpcProvider(eager=False)` gives every handler a Task from the start.

A hot path can go further with a plain method marked `@returns_future`: it
returns the response, or an `asyncio.Future` or `rpc.Promise` of it, and the
provider writes the response from the future's done callback: no coroutine,
no Task (the KV and Raft services answer this way, because their answer
comes from the Raft node anyway). A `Promise` runs that callback the moment
it is settled, so the response is written then, without a loop iteration
per hand it passes through.

Responses produced while a chunk is being processed are written with a single
`transport.write` at the end of the chunk. Of the responses finished later,
the first of a loop iteration is written at once (a follower's answer to its
leader, a sequential client's reply: nothing would join it), and the rest
of that iteration are coalesced into one write (`call_soon` flush).

Failure policy (ARCHITECTURE.md, rpc/):
* unknown service/method, undecodable body: an error response, connection kept;
* handler raises: HANDLER_ERROR with its message (an `RpcError` raised by the
  handler is passed through with its own status); the server keeps serving;
* garbage, oversized or undecodable frame header: logged, connection closed;
* the client goes away mid-call: its handlers are cancelled, nothing is logged
  beyond debug level;
* `timeout_ms` in the request: the handler is cancelled when it passes and
  DEADLINE_EXCEEDED is sent (the caller has given up by then anyway; the point
  is to stop wasting work).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, NamedTuple, TypeVar, Union, cast

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from rpc._codec import (
    DEFAULT_MAX_FRAME_SIZE,
    NEED_DATA,
    FrameDecoder,
    encode,
    encode_ok_response,
)
from rpc._deadlines import loop_deadlines
from rpc._outbox import Outbox
from rpc._promise import Promise
from rpc.errors import LocalProtocolError, RemoteProtocolError, RpcError, Status
from rpc.rpc_pb2 import RESPONSE, Header

__all__ = ["RpcProvider", "returns_future"]

log = logging.getLogger("rpc.provider")

_REQUEST = 0  # rpc_pb2.REQUEST; a plain int compares fastest


_FUTURE_MARK = "__rpc_returns_future__"

F = TypeVar("F", bound=Callable[..., Any])


def returns_future(fn: F) -> F:
    """Mark a plain (non-async) handler that returns its response message
    or an ``asyncio.Future`` or ``Promise`` of it. The provider answers from the future's
    done callback; a handler error is reported as for async handlers (an
    exception raised or set on the future). When the call's deadline passes
    or its connection goes away, the provider cancels the future."""
    setattr(fn, _FUTURE_MARK, True)
    return fn


#: What a call in flight waits for.
_Pending = Union["asyncio.Future[Any]", Promise[Any]]


class _Method(NamedTuple):
    handler: Callable[[Any], Any]
    parse: Callable[[bytes], Message]
    response_type: type[Message]
    full_name: str
    #: A @returns_future handler (else an async def).
    returns_future: bool


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], pending: Any) -> Generator[Any, Any, None]:
    """Continue, inside a Task, a coroutine that was started eagerly.

    `pending` is what the coroutine yielded on its first step (the future it
    waits for). We yield it to the Task as if the Task had stepped the
    coroutine itself, forward anything thrown at us (cancellation) into the
    coroutine, then delegate the rest with `yield from`.
    """
    while True:
        try:
            yield pending
        except BaseException as exc:  # forwarded, not handled
            try:
                pending = coro.throw(exc)
            except StopIteration:
                return
            continue
        break
    yield from coro


class RpcProvider:
    """Serves protobuf services on one TCP address.

    >>> provider = RpcProvider("127.0.0.1", 0)
    >>> provider.register(friend_pb2.DESCRIPTOR.services_by_name["FriendService"], impl)
    >>> await provider.start(); provider.port   # the real port when 0 was asked
    >>> await provider.close()

    `idle_timeout` (seconds) closes connections that have sent nothing and
    have no call in flight for that long; None keeps them forever.
    `eager=False` runs every handler in its own Task from the start.
    `max_frames_per_step` bounds the requests of one connection dispatched
    per event-loop step; the rest of a large chunk waits for the next step
    (reading paused meanwhile). The loop's other work runs in between: a
    Raft node starts replicating the first slice of a burst of proposals
    while it parses the next, and a burst of reads is answered in slices,
    so the client works on the first answers while the server computes the
    rest (gets with 128 clients on one connection went from 11.6k to 14.6k
    per second; puts unchanged).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        idle_timeout: float | None = None,
        eager: bool = True,
        backlog: int = 1024,
        max_frames_per_step: int = 64,
    ) -> None:
        if max_frames_per_step < 1:
            raise ValueError("max_frames_per_step must be at least 1")
        self.host = host
        self._requested_port = port
        self.max_frame_size = max_frame_size
        self.idle_timeout = idle_timeout
        self.eager = eager
        self.backlog = backlog
        self.max_frames_per_step = max_frames_per_step
        self._services: dict[str, dict[str, _Method]] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._port: int | None = None

    # -- registration -----------------------------------------------------

    def register(self, descriptor: ServiceDescriptor, impl: object) -> None:
        """Serve `descriptor`'s methods with `impl`'s same-named async methods.

        Raises TypeError if `impl` lacks a method or one is neither `async
        def` nor marked `@returns_future`, ValueError for a duplicate service
        or a streaming method.
        """
        if not isinstance(descriptor, ServiceDescriptor):
            raise TypeError(f"expected a ServiceDescriptor, got {type(descriptor).__name__}")
        name = descriptor.full_name
        if name in self._services:
            raise ValueError(f"service {name} is already registered")
        methods: dict[str, _Method] = {}
        problems: list[str] = []
        for md in descriptor.methods:
            if md.client_streaming or md.server_streaming:
                raise ValueError(f"{md.full_name}: streaming methods are not supported")
            fn = getattr(impl, md.name, None)
            if fn is None:
                problems.append(f"missing method {md.name}")
                continue
            future_style = bool(getattr(fn, _FUTURE_MARK, False))
            if not future_style and not inspect.iscoroutinefunction(fn):
                problems.append(f"{md.name} is not an async def (nor @returns_future)")
                continue
            request_type = GetMessageClass(md.input_type)
            methods[md.name] = _Method(
                handler=fn,
                parse=request_type.FromString,
                response_type=GetMessageClass(md.output_type),
                full_name=md.full_name,
                returns_future=future_style,
            )
        if problems:
            raise TypeError(
                f"{type(impl).__name__} cannot serve {name}: " + "; ".join(problems)
            )
        self._services[name] = methods

    # -- lifecycle --------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked); only after start()."""
        if self._port is None:
            raise RuntimeError("provider not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Bind and listen. Raises OSError if the address is unusable."""
        if self._server is not None:
            raise RuntimeError("provider already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self),
            self.host,
            self._requested_port,
            reuse_address=True,
            backlog=self.backlog,
        )
        sockets = self._server.sockets
        self._port = sockets[0].getsockname()[1] if sockets else self._requested_port
        names = ", ".join(self._services) or "nothing"
        log.info("serving %s on %s:%d", names, self.host, self._port)

    async def close(self) -> None:
        """Stop listening, cancel in-flight handlers, close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks: list[asyncio.Future[Any]] = []
        for conn in list(self._connections):
            tasks.extend(conn.shutdown())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> RpcProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _ServerConnection(asyncio.Protocol):
    """One client connection: decode requests, run handlers, write responses."""

    def __init__(self, provider: RpcProvider) -> None:
        self._provider = provider
        self._services = provider._services
        self._eager = provider.eager
        self._max = provider.max_frame_size
        self._max_frames_per_step = provider.max_frames_per_step
        self._decoder = FrameDecoder(provider.max_frame_size)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer: object = None
        # Calls in flight: the Task of a suspended async handler, or the
        # future a @returns_future handler returned.
        self._tasks: dict[int, _Pending] = {}
        self._deadlines = loop_deadlines(self._loop)
        self._expired: set[int] = set()
        # Held while a chunk is dispatched: its responses leave in one write.
        self._outbox = Outbox(self._loop)
        # Reading is paused while either holds (see _update_reading).
        self._backlogged = False
        self._write_paused = False
        self._closed = False
        self._last_activity = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None

    # -- transport callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance.
        self._transport = self._outbox.transport = cast(asyncio.Transport, transport)
        self._peer = transport.get_extra_info("peername")
        self._provider._connections.add(self)
        log.debug("connection from %s", self._peer)
        if self._provider.idle_timeout is not None:
            self._last_activity = self._loop.time()
            self._idle_handle = self._loop.call_later(
                self._provider.idle_timeout, self._check_idle
            )

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._idle_handle is not None:
            self._last_activity = self._loop.time()
        self._decoder.receive_data(data)
        self._process()

    def _process(self) -> None:
        """Dispatch the buffered frames, at most ``max_frames_per_step`` per
        loop step: a large chunk of requests is handled in slices, with the
        loop's other callbacks (the Raft drain, other connections) running
        in between, and reading paused until the backlog is gone."""
        if self._closed or (self._transport is not None and self._transport.is_closing()):
            return  # closing: what was not dispatched yet never starts
        decoder = self._decoder
        budget = self._max_frames_per_step
        outbox = self._outbox
        outbox.held = True
        try:
            while True:
                frame = decoder.next_frame()
                if frame is NEED_DATA:
                    if self._backlogged:
                        self._backlogged = False
                        self._update_reading()
                    break
                self._dispatch(frame.header, frame.body)
                budget -= 1
                if not budget:
                    if not self._backlogged:
                        self._backlogged = True
                        self._update_reading()
                    self._loop.call_soon(self._process)
                    break
        except RemoteProtocolError as exc:
            log.warning("closing connection from %s: %s", self._peer, exc)
            outbox.flush()
            self._close_transport()
            return
        finally:
            outbox.held = False
        outbox.flush()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed or transport.is_closing():
            return
        if self._backlogged or self._write_paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self._decoder.buffered:
            log.warning(
                "connection from %s closed inside a frame (%d bytes pending)",
                self._peer,
                self._decoder.buffered,
            )
        # Returning None closes our side too; in-flight handlers are cancelled
        # in connection_lost (their responses could not be delivered reliably).
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._provider._connections.discard(self)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._tasks:
            log.debug("connection from %s lost, cancelling %d calls", self._peer, len(self._tasks))
            # A copy: cancelling a Promise answers its call at once, which
            # removes it from _tasks.
            for task in list(self._tasks.values()):
                task.cancel()
        self._outbox.clear()

    def pause_writing(self) -> None:
        # The client is not reading its responses: stop reading its requests
        # until the kernel buffer drains, instead of buffering without bound.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- requests -------------------------------------------------------------

    def _dispatch(self, header: Header, body: bytes) -> None:
        call_id = header.call_id
        if header.kind != _REQUEST:
            raise RemoteProtocolError("received a response frame on a provider connection")
        svc = self._services.get(header.service)
        if svc is None:
            self._send_error(call_id, Status.UNKNOWN_SERVICE, f"unknown service {header.service!r}")
            return
        method = svc.get(header.method)
        if method is None:
            self._send_error(
                call_id,
                Status.UNKNOWN_METHOD,
                f"service {header.service} has no method {header.method!r}",
            )
            return
        if call_id in self._tasks:
            self._send_error(call_id, Status.BAD_REQUEST, f"call id {call_id} already in flight")
            return
        try:
            request = method.parse(body)
        except (DecodeError, ValueError) as exc:
            self._send_error(
                call_id, Status.BAD_REQUEST, f"cannot decode {method.full_name} request: {exc}"
            )
            return
        if method.returns_future:
            self._start_future_call(call_id, method, request, header.timeout_ms)
            return
        coro = self._run(call_id, method, request)
        if self._eager:
            try:
                pending = coro.send(None)
            except StopIteration:
                return  # answered without suspending: no Task needed
            task = self._loop.create_task(_resume(coro, pending))
        else:
            task = self._loop.create_task(coro)
        self._tasks[call_id] = task
        timeout_ms = header.timeout_ms
        if timeout_ms:
            self._deadlines.add(timeout_ms / 1000.0, (self._expire, (call_id, task)))

    async def _run(self, call_id: int, method: _Method, request: Message) -> None:
        try:
            response = await method.handler(request)
        except asyncio.CancelledError:
            if call_id in self._expired:
                self._send_error(call_id, Status.DEADLINE_EXCEEDED, "deadline exceeded on server")
                return
            raise
        except Exception as exc:
            self._handler_failed(call_id, method, exc)
            return
        finally:
            if self._tasks:
                self._tasks.pop(call_id, None)
            if self._expired:
                self._expired.discard(call_id)
        self._respond(call_id, method, response)

    def _start_future_call(
        self, call_id: int, method: _Method, request: Message, timeout_ms: int
    ) -> None:
        try:
            result = method.handler(request)
        except Exception as exc:
            self._handler_failed(call_id, method, exc)
            return
        if not isinstance(result, (Promise, asyncio.Future)):
            self._respond(call_id, method, result)
            return
        if result.done():
            self._future_done(call_id, method, result)
            return
        self._tasks[call_id] = result
        result.add_done_callback(lambda f: self._future_done(call_id, method, f))
        if timeout_ms:
            self._deadlines.add(timeout_ms / 1000.0, (self._expire, (call_id, result)))

    def _future_done(self, call_id: int, method: _Method, future: _Pending) -> None:
        if self._tasks.get(call_id) is future:
            del self._tasks[call_id]
        if future.cancelled():
            if call_id in self._expired:
                self._expired.discard(call_id)
                self._send_error(call_id, Status.DEADLINE_EXCEEDED, "deadline exceeded on server")
            else:
                # Cancelled by the handler's side (or by close(), when the
                # answer is dropped with the connection): never leave the
                # caller waiting.
                self._send_error(call_id, Status.UNAVAILABLE, "call cancelled on server")
            return
        exc = future.exception()
        if exc is not None:
            if not isinstance(exc, Exception):
                exc = RuntimeError(f"handler future failed with {type(exc).__name__}")
            self._handler_failed(call_id, method, exc)
            return
        self._respond(call_id, method, future.result())

    def _handler_failed(self, call_id: int, method: _Method, exc: Exception) -> None:
        if isinstance(exc, RpcError):
            self._send_error(call_id, exc.status, exc.message)
            return
        log.warning("handler %s raised", method.full_name, exc_info=exc)
        self._send_error(call_id, Status.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")

    def _respond(self, call_id: int, method: _Method, response: Any) -> None:
        if type(response) is not method.response_type:
            self._send_error(
                call_id,
                Status.HANDLER_ERROR,
                f"{method.full_name} returned {type(response).__name__}, "
                f"expected {method.response_type.__name__}",
            )
            return
        try:
            frame = encode_ok_response(call_id, response.SerializeToString(), self._max)
        except LocalProtocolError as exc:
            self._send_error(call_id, Status.HANDLER_ERROR, f"response not sent: {exc}")
            return
        self._send(frame)

    def _expire(self, item: tuple[int, _Pending]) -> None:
        call_id, task = item
        # Identity check: a finished call's id may have been reused since
        # (and after connection_lost every call is done).
        if self._tasks.get(call_id) is task and not task.done():
            self._expired.add(call_id)
            task.cancel()

    def _send_error(self, call_id: int, status: Status, message: str) -> None:
        header = Header(
            kind=RESPONSE,
            call_id=call_id,
            status=int(status),  # type: ignore[arg-type]  # an IntEnum of the same values
            error=message[:4096],
        )
        self._send(encode(header, b""))

    # -- writing --------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if not self._closed:
            self._outbox.send(frame)

    # -- closing --------------------------------------------------------------

    def _check_idle(self) -> None:
        timeout = self._provider.idle_timeout
        if self._closed or timeout is None:
            return
        idle = self._loop.time() - self._last_activity
        if idle >= timeout and not self._tasks:
            log.info("closing idle connection from %s", self._peer)
            self._close_transport()
            return
        self._idle_handle = self._loop.call_later(max(timeout - idle, 0.01), self._check_idle)

    def _close_transport(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def shutdown(self) -> list[asyncio.Future[Any]]:
        """Cancel in-flight handlers and close; returns the cancelled tasks
        (a cancelled ``Promise`` has nothing left to wait for)."""
        pending = list(self._tasks.values())
        for task in pending:
            task.cancel()
        self._outbox.flush()
        self._close_transport()
        return [t for t in pending if isinstance(t, asyncio.Future)]
