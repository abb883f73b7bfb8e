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

Connections are a bounded resource (each holds a file descriptor):
* `max_connections` caps the connections open at once. The provider accepts
  connections itself (not through ``loop.create_server``) so that the cap is
  checked on the accepted socket before any transport or protocol exists: a
  connection over the cap is closed at once, before any read, within the same
  callback that accepted it. So at no instant do more than the cap (plus the
  reserve below) plus one descriptors belong to inbound connections. An
  event loop's own accept loop would instead take every queued connection
  (up to the listen backlog, for uvloop all of them) and only close the
  excess a loop iteration or two later, in ``connection_made``: a flood could
  then briefly hold a backlog's worth of descriptors more than the cap.
  Refusals are logged at most once per second, with a count.
* `reserved_connections` more slots are kept for `reserved_service` (the
  Raft peers' service): a connection accepted into one of them is on
  probation, and is closed unless its first request is to that service,
  or if it sends none within `reserved_grace` seconds. So a flood of idle
  client connections at the cap does not lock a peer out when it
  reconnects; probing connections hold a reserved slot for a few seconds
  at most.
* `idle_timeout` closes a connection that has sent nothing and has no call
  in flight for that long; a connection whose first request was to
  `reserved_service` is a peer's and is never closed for idleness (a
  follower's connection to its leader carries nothing between elections).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import socket
import types
from collections.abc import Callable, Coroutine, Generator
from functools import partial
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


class _Refused(Exception):
    """A connection on probation sent a first request it may not send."""


class _RateLimitedLog:
    """One warning at once, then at most one line per `interval` seconds
    with the count of what happened meanwhile: a flood of refused
    connections must not flood the log."""

    def __init__(self, what: str, interval: float = 1.0) -> None:
        self._what = what
        self._interval = interval
        self._suppressed = 0
        self._handle: asyncio.TimerHandle | None = None
        self.total = 0

    def note(self, detail: str) -> None:
        self.total += 1
        if self._handle is not None:
            self._suppressed += 1
            return
        log.warning("%s: %s", self._what, detail)
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def _flush(self) -> None:
        self._handle = None
        if self._suppressed:
            log.warning("%s: %d more in the last %g s",
                        self._what, self._suppressed, self._interval)
            self._suppressed = 0
            # Keep the window open while the flood lasts.
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _same(protocol: _ServerConnection) -> _ServerConnection:
    return protocol


#: accept() errors that mean "out of resources for now": stop accepting for
#: a moment (the connections wait in the kernel's backlog) instead of
#: spinning on a listening socket that stays readable.
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_DELAY = 0.5


class RpcProvider:
    """Serves protobuf services on one TCP address.

    >>> provider = RpcProvider("127.0.0.1", 0)
    >>> provider.register(friend_pb2.DESCRIPTOR.services_by_name["FriendService"], impl)
    >>> await provider.start(); provider.port   # the real port when 0 was asked
    >>> await provider.close()

    `idle_timeout` (seconds) closes connections that have sent nothing and
    have no call in flight for that long; None keeps them forever.
    `max_connections` caps the connections open at once (None: no cap);
    `reserved_connections` more are admitted only to connections whose first
    request is to `reserved_service`, which are also exempt from
    `idle_timeout` (see the module docstring).
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
        max_connections: int | None = None,
        reserved_connections: int = 0,
        reserved_service: str | None = None,
        reserved_grace: float = 2.0,
    ) -> None:
        if max_frames_per_step < 1:
            raise ValueError("max_frames_per_step must be at least 1")
        if max_connections is not None and max_connections < 0:
            raise ValueError("max_connections must be at least 0")
        if reserved_connections < 0:
            raise ValueError("reserved_connections must be at least 0")
        if reserved_connections and reserved_service is None:
            raise ValueError("reserved_connections needs a reserved_service")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive (None: no timeout)")
        self.host = host
        self._requested_port = port
        self.max_frame_size = max_frame_size
        self.idle_timeout = idle_timeout
        self.eager = eager
        self.backlog = backlog
        self.max_frames_per_step = max_frames_per_step
        self.max_connections = max_connections
        self.reserved_connections = reserved_connections
        self.reserved_service = reserved_service
        self.reserved_grace = reserved_grace
        self._services: dict[str, dict[str, _Method]] = {}
        self._listeners: list[socket.socket] | None = None
        self._connections: set[_ServerConnection] = set()
        # Accepted sockets not closed yet, counted from accept(): those whose
        # transport is still being set up count against the cap too.
        self._open = 0
        self._accepting: set[asyncio.Future[Any]] = set()
        self._refusals = _RateLimitedLog("refusing connections")
        self._accept_errors = _RateLimitedLog("cannot accept connections")
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
        return self._listeners is not None

    @property
    def open_connections(self) -> int:
        """Connections holding a descriptor now (including ones being set up)."""
        return self._open

    @property
    def refused_connections(self) -> int:
        """Connections refused so far: over the cap, or not a reserved
        service's on a reserved slot."""
        return self._refusals.total

    async def start(self) -> None:
        """Bind and listen. Raises OSError if the address is unusable."""
        if self._listeners is not None:
            raise RuntimeError("provider already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host or None, self._requested_port,
            type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE,
        )
        listeners: list[socket.socket] = []
        try:
            for family, type_, proto, _, sockaddr in dict.fromkeys(infos):
                sock = socket.socket(family, type_, proto)
                listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # As loop.create_server: each family gets its own socket.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(self.backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in listeners:
                sock.close()
            raise
        self._listeners = listeners
        for sock in listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._port = listeners[0].getsockname()[1] if listeners else self._requested_port
        names = ", ".join(self._services) or "nothing"
        cap = "" if self.max_connections is None else (
            f" (at most {self.max_connections} connections"
            f" + {self.reserved_connections} for {self.reserved_service})"
            if self.reserved_connections else f" (at most {self.max_connections} connections)")
        log.info("serving %s on %s:%d%s", names, self.host, self._port, cap)

    def _accept(self, listener: socket.socket) -> None:
        """Accept what the kernel has queued (at most a backlog's worth per
        call, so other callbacks run in between during a flood), refusing
        at once what is over the cap."""
        loop = asyncio.get_running_loop()
        cap = self.max_connections
        for _ in range(self.backlog):
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    self._accept_errors.note(f"{exc}; pausing for {_ACCEPT_RETRY_DELAY} s")
                    self._pause_accepting(listener)
                else:
                    self._accept_errors.note(str(exc))
                return
            probation = False
            if cap is not None and self._open >= cap:
                if self._open >= cap + self.reserved_connections:
                    # Closed before anything else is done with it: the
                    # descriptor is back before this callback returns.
                    conn.close()
                    self._refusals.note(
                        f"{self._open} open, cap {cap}"
                        + (f" + {self.reserved_connections} reserved"
                           if self.reserved_connections else "")
                        + f"; closed connection from {addr}")
                    continue
                probation = True
            self._open += 1
            protocol = _ServerConnection(self, probation=probation)
            try:
                conn.setblocking(False)
                fut = asyncio.ensure_future(
                    loop.connect_accepted_socket(partial(_same, protocol), conn))
            except BaseException:
                protocol.release()
                conn.close()
                raise
            self._accepting.add(fut)
            fut.add_done_callback(partial(self._accepted, conn=conn, protocol=protocol))

    def _accepted(
        self, fut: asyncio.Future[Any], *, conn: socket.socket, protocol: _ServerConnection
    ) -> None:
        self._accepting.discard(fut)
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            log.debug("setting up an accepted connection failed: %r", exc)
            if not protocol.made:
                protocol.release()
                conn.close()

    def _pause_accepting(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if self._listeners is not None and listener in self._listeners:
                loop.add_reader(listener.fileno(), self._accept, listener)

        loop.call_later(_ACCEPT_RETRY_DELAY, resume)

    async def close(self) -> None:
        """Stop listening, cancel in-flight handlers, close every connection."""
        listeners, self._listeners = self._listeners, None
        if listeners is not None:
            loop = asyncio.get_running_loop()
            for sock in listeners:
                loop.remove_reader(sock.fileno())
                sock.close()
        if self._accepting:
            # Connections still being set up: let them finish (only their
            # connection_made is awaited), then close them with the rest.
            await asyncio.gather(*self._accepting, return_exceptions=True)
        tasks: list[asyncio.Future[Any]] = []
        for conn in list(self._connections):
            tasks.extend(conn.shutdown())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._refusals.cancel()
        self._accept_errors.cancel()

    async def __aenter__(self) -> RpcProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _ServerConnection(asyncio.Protocol):
    """One client connection: decode requests, run handlers, write responses."""

    def __init__(self, provider: RpcProvider, *, probation: bool = False) -> None:
        self._provider = provider
        # Admitted on a reserved slot: the first request must be to
        # provider.reserved_service (checked in _dispatch while
        # _unclassified holds, i.e. until the first request).
        self._probation = probation
        self._unclassified = provider.reserved_service is not None
        #: The first request was to the reserved (peer) service.
        self.is_peer = False
        #: connection_made has run (so connection_lost will).
        self.made = False
        self._counted = True  # holds one of provider._open
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
        self._probation_handle: asyncio.TimerHandle | None = None

    def release(self) -> None:
        """Give back this connection's slot in the provider's count (once)."""
        if self._counted:
            self._counted = False
            self._provider._open -= 1

    # -- transport callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance.
        self._transport = self._outbox.transport = cast(asyncio.Transport, transport)
        self._peer = transport.get_extra_info("peername")
        self._provider._connections.add(self)
        log.debug("connection from %s%s", self._peer, " (reserved slot)" if self._probation else "")
        if self._probation:
            self._probation_handle = self._loop.call_later(
                self._provider.reserved_grace, self._probation_expired
            )
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
        except _Refused:
            outbox.clear()
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
        self.release()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._probation_handle is not None:
            self._probation_handle.cancel()
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
        if self._unclassified:
            self._classify(header.service)
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

    def _classify(self, service: str) -> None:
        """On the first request: is this a peer's connection? A connection
        on a reserved slot that is not is refused (raises _Refused)."""
        self._unclassified = False
        self.is_peer = service == self._provider.reserved_service
        if self._probation_handle is not None:
            self._probation_handle.cancel()
            self._probation_handle = None
        if self._probation:
            self._probation = False
            if not self.is_peer:
                self._provider._refusals.note(
                    f"closed connection from {self._peer} on a reserved slot: "
                    f"its first request is to {service!r}, not {self._provider.reserved_service}")
                raise _Refused

    def _probation_expired(self) -> None:
        self._probation_handle = None
        if self._probation and not self._closed:
            self._provider._refusals.note(
                f"closed connection from {self._peer} on a reserved slot: "
                f"no request within {self._provider.reserved_grace:g} s")
            self._close_transport()

    # -- writing --------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if not self._closed:
            self._outbox.send(frame)

    # -- closing --------------------------------------------------------------

    def _check_idle(self) -> None:
        timeout = self._provider.idle_timeout
        if self._closed or timeout is None or self.is_peer:
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
