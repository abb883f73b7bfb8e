"""A controllable TCP proxy for network-fault injection (the nemesis's network).

One :class:`LinkProxy` stands for one directed link: it listens on
``127.0.0.1:<port>`` and forwards every accepted connection to a target.
Side ``a`` is whoever connects to the proxy (the dialing node or client),
side ``b`` the target (the listening node). At runtime a link can be:

* blocked, ``block(direction, mode)``:

  - ``mode="blackhole"`` (a partition): bytes read from a blocked direction
    are discarded, nothing is sent back, connections stay open and new ones
    are accepted — so the sender's RPCs time out, as with a dead network.
    Dropping bytes corrupts a TCP byte stream (a real network would
    retransmit instead), so when the link is unblocked every connection
    that lost bytes is closed; the peers reconnect on fresh, clean streams.
    ``direction`` may be ``"a_to_b"``, ``"b_to_a"`` or ``"both"``.
  - ``mode="reset"`` (a crashed or firewalled peer): all connections are
    reset (RST) and new ones are accepted and reset at once. Only
    ``direction="both"``.

* unblocked, ``unblock(direction)``;
* slowed, ``set_delay(seconds, jitter, direction)``: each chunk is delivered
  ``seconds`` (+ up to ``jitter``) after it was read, in order (latency, not
  a bandwidth limit).

Counters (:class:`LinkStats`) report bytes forwarded and dropped per
direction and connections accepted, active and refused.

Two ways to run links:

* inside the test's event loop: ``proxy = LinkProxy(target)``,
  ``await proxy.start()``, call ``block()`` etc. from that loop,
  ``await proxy.close()``;
* from synchronous code (e.g. a test that runs real kvserver processes and
  a clerk): :class:`ProxyThread` runs an event loop in a background thread
  and hands out :class:`SyncLink` handles whose methods return once the
  change is in effect. :class:`ProxyMesh` builds a full mesh of links for
  an N-node cluster with ``partition``/``heal``/``isolate``/one-way blocks.

Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = ["LinkProxy", "LinkStats", "ProxyMesh", "ProxyThread", "SyncLink"]

Direction = Literal["a_to_b", "b_to_a", "both"]
Mode = Literal["blackhole", "reset"]
_DIRS: tuple[str, str] = ("a_to_b", "b_to_a")
_CHUNK = 65536
_EOF = b""
T = TypeVar("T")


def _dirs(direction: Direction) -> tuple[str, ...]:
    if direction == "both":
        return _DIRS
    if direction in _DIRS:
        return (direction,)
    raise ValueError(f"bad direction {direction!r}: use 'a_to_b', 'b_to_a' or 'both'")


@dataclass
class LinkStats:
    """Counters of one link (a snapshot when returned by ``stats()``)."""

    bytes_a_to_b: int = 0
    bytes_b_to_a: int = 0
    dropped_a_to_b: int = 0
    dropped_b_to_a: int = 0
    accepted: int = 0
    refused: int = 0
    active: int = 0
    closed_tainted: int = 0

    def forwarded(self, direction: str) -> int:
        return int(getattr(self, f"bytes_{direction}"))

    def add_forwarded(self, direction: str, n: int) -> None:
        setattr(self, f"bytes_{direction}", self.forwarded(direction) + n)

    def add_dropped(self, direction: str, n: int) -> None:
        name = f"dropped_{direction}"
        setattr(self, name, int(getattr(self, name)) + n)


@dataclass(eq=False)
class _Conn:
    a_reader: asyncio.StreamReader
    a_writer: asyncio.StreamWriter
    b_reader: asyncio.StreamReader
    b_writer: asyncio.StreamWriter
    tainted: bool = False
    task: asyncio.Task[None] | None = None
    queues: dict[str, asyncio.Queue[tuple[float, bytes]]] = field(default_factory=dict)

    def abort(self) -> None:
        """Reset both sides and stop the pumps."""
        for w in (self.a_writer, self.b_writer):
            w.transport.abort()
        # Not from inside the task itself (_serve's cleanup): that would mark
        # the finished handler cancelled and asyncio would log it as an error.
        if (self.task is not None and not self.task.done()
                and self.task is not asyncio.current_task()):
            self.task.cancel()


class LinkProxy:
    """One proxied link, driven by the event loop it is started in."""

    def __init__(
        self,
        target: tuple[str, int],
        listen_port: int = 0,
        name: str = "",
        connect_timeout: float = 2.0,
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.name = name or f"->{target[0]}:{target[1]}"
        self._listen_port = listen_port
        self._connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._blocked: dict[str, bool] = dict.fromkeys(_DIRS, False)
        self._reset = False
        self._delay: dict[str, tuple[float, float]] = dict.fromkeys(_DIRS, (0.0, 0.0))
        self._stats = LinkStats()
        self._rng = random.Random(seed)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start listening on 127.0.0.1 (``listen_port`` 0 picks a free port)."""
        self._server = await asyncio.start_server(
            self._on_accept, "127.0.0.1", self._listen_port
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def close(self) -> None:
        """Stop listening, reset every connection, and wait for all tasks to end."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        tasks = [c.task for c in self._conns if c.task is not None]
        tasks += list(self._handlers)
        for t in self._handlers:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- control (call from the proxy's loop) ------------------------------

    def block(self, direction: Direction = "both", mode: Mode = "blackhole") -> None:
        """Block the link (see the module doc for the two modes)."""
        if mode == "reset":
            if direction != "both":
                raise ValueError("mode='reset' blocks both directions; use direction='both'")
            self._reset = True
            for conn in list(self._conns):
                conn.abort()
            return
        if mode != "blackhole":
            raise ValueError(f"bad mode {mode!r}: use 'blackhole' or 'reset'")
        for d in _dirs(direction):
            self._blocked[d] = True

    def unblock(self, direction: Direction = "both") -> None:
        """Undo ``block``; connections that lost bytes to a blackhole are closed."""
        for d in _dirs(direction):
            self._blocked[d] = False
        if direction == "both":
            self._reset = False
        if not any(self._blocked.values()):
            for conn in list(self._conns):
                if conn.tainted:
                    self._stats.closed_tainted += 1
                    conn.abort()

    def set_delay(
        self, seconds: float, jitter: float = 0.0, direction: Direction = "both"
    ) -> None:
        """Deliver each chunk ``seconds`` (+ uniform ``[0, jitter]``) after reading it."""
        if seconds < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        for d in _dirs(direction):
            self._delay[d] = (seconds, jitter)

    def reset_connections(self) -> None:
        """Reset every current connection once (the link stays up)."""
        for conn in list(self._conns):
            conn.abort()

    def is_blocked(self, direction: str) -> bool:
        return self._reset or self._blocked[direction]

    def stats(self) -> LinkStats:
        return replace(self._stats, active=len(self._conns))

    # -- data path ---------------------------------------------------------

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Cancelled by close(): end quietly (asyncio's stream callback
            # would log a cancelled client_connected_cb task as an error).
            pass
        finally:
            self._handlers.discard(task)

    async def _serve(self, a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter) -> None:
        if self._reset or self._closed:
            self._stats.refused += 1
            a_writer.transport.abort()
            return
        try:
            b_reader, b_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self._connect_timeout
            )
        except (OSError, TimeoutError):
            self._stats.refused += 1
            a_writer.transport.abort()
            return
        if self._reset or self._closed:  # blocked while we were connecting
            self._stats.refused += 1
            a_writer.transport.abort()
            b_writer.transport.abort()
            return
        self._stats.accepted += 1
        conn = _Conn(a_reader, a_writer, b_reader, b_writer)
        conn.queues = {d: asyncio.Queue() for d in _DIRS}
        self._conns.add(conn)
        conn.task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(conn, a_reader, "a_to_b"))
                tg.create_task(self._write(conn, b_writer, "a_to_b"))
                tg.create_task(self._read(conn, b_reader, "b_to_a"))
                tg.create_task(self._write(conn, a_writer, "b_to_a"))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(conn)
            if conn.tainted:
                conn.abort()
            else:
                _close_quietly(conn)

    async def _read(self, conn: _Conn, reader: asyncio.StreamReader, direction: str) -> None:
        loop = asyncio.get_running_loop()
        queue = conn.queues[direction]
        last = 0.0
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                queue.put_nowait((0.0, _EOF))
                return
            if self.is_blocked(direction):
                self._stats.add_dropped(direction, len(data))
                conn.tainted = True
                continue
            delay, jitter = self._delay[direction]
            if jitter:
                delay += self._rng.uniform(0.0, jitter)
            last = max(last, loop.time() + delay) if delay else 0.0
            queue.put_nowait((last, data))

    async def _write(self, conn: _Conn, writer: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        queue = conn.queues[direction]
        while True:
            when, data = await queue.get()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            wait = when - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.is_blocked(direction):
                self._stats.add_dropped(direction, len(data))
                conn.tainted = True
                continue
            writer.write(data)
            await writer.drain()
            self._stats.add_forwarded(direction, len(data))


def _close_quietly(conn: _Conn) -> None:
    for w in (conn.a_writer, conn.b_writer):
        with contextlib.suppress(Exception):
            w.close()


class ProxyThread:
    """An event loop in a daemon thread hosting links, controlled synchronously.

    Use as a context manager, or call :meth:`close`; it stops every link,
    waits for their tasks, stops the loop and joins the thread.
    """

    def __init__(self, call_timeout: float = 10.0) -> None:
        self._call_timeout = call_timeout
        self._loop = asyncio.new_event_loop()
        self._links: list[SyncLink] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the proxy loop and wait for its result."""
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("ProxyThread is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(self._call_timeout)

    def add_link(
        self, target: tuple[str, int], listen_port: int = 0, name: str = ""
    ) -> SyncLink:
        """Start a proxy to ``target``; returns its synchronous handle."""
        proxy = LinkProxy(target, listen_port, name)
        self.call(proxy.start())
        link = SyncLink(self, proxy)
        self._links.append(link)
        return link

    @property
    def links(self) -> list[SyncLink]:
        return list(self._links)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            for link in self._links:
                self.call(link.proxy.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._call_timeout)

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncLink:
    """Thread-safe handle on a :class:`LinkProxy` running in a :class:`ProxyThread`."""

    def __init__(self, owner: ProxyThread, proxy: LinkProxy) -> None:
        self._owner = owner
        self.proxy = proxy
        self.port = proxy.port
        self.address = proxy.address
        self.name = proxy.name

    def _do(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self._owner.call(run())

    def block(self, direction: Direction = "both", mode: Mode = "blackhole") -> None:
        self._do(self.proxy.block, direction, mode)

    def unblock(self, direction: Direction = "both") -> None:
        self._do(self.proxy.unblock, direction)

    def set_delay(self, seconds: float, jitter: float = 0.0, direction: Direction = "both") -> None:
        self._do(self.proxy.set_delay, seconds, jitter, direction)

    def reset_connections(self) -> None:
        self._do(self.proxy.reset_connections)

    def stats(self) -> LinkStats:
        result: LinkStats = self._do(self.proxy.stats)
        return result

    def __repr__(self) -> str:
        return f"SyncLink({self.name}, port={self.port})"


class ProxyMesh:
    """A link for every ordered pair of nodes of a cluster.

    Link ``(i, j)`` is what node ``i`` dials to reach node ``j``: requests
    from ``i`` flow a_to_b, the replies b_to_a. Node ``i`` must be given
    :meth:`peer_addresses` ``(i)`` (its own real address, the proxies for the
    others), e.g. with :meth:`write_config`.
    """

    def __init__(self, thread: ProxyThread, nodes: Iterable[tuple[str, int]]) -> None:
        self.thread = thread
        self.nodes = list(nodes)
        self.links: dict[tuple[int, int], SyncLink] = {}
        for i in range(len(self.nodes)):
            for j in range(len(self.nodes)):
                if i != j:
                    self.links[(i, j)] = thread.add_link(self.nodes[j], name=f"{i}->{j}")

    def peer_addresses(self, i: int) -> list[tuple[str, int]]:
        return [
            self.nodes[j] if j == i else self.links[(i, j)].address for j in range(len(self.nodes))
        ]

    def write_config(self, i: int, path: str | Path) -> Path:
        """Write node ``i``'s view of the cluster in the seed's test.conf format."""
        lines = []
        for j, (host, port) in enumerate(self.peer_addresses(i)):
            lines += [f"node{j}ip={host}", f"node{j}port={port}"]
        p = Path(path)
        p.write_text("\n".join(lines) + "\n")
        return p

    def block_one_way(self, src: int, dst: int, mode: Mode = "blackhole") -> None:
        """Nothing ``src`` sends reaches ``dst`` (``dst`` can still reach ``src``)."""
        if mode == "reset":
            self.links[(src, dst)].block("both", "reset")
            self.links[(dst, src)].block("both", "reset")
            return
        self.links[(src, dst)].block("a_to_b")
        self.links[(dst, src)].block("b_to_a")

    def cut(self, i: int, j: int, mode: Mode = "blackhole") -> None:
        self.links[(i, j)].block("both", mode)
        self.links[(j, i)].block("both", mode)

    def partition(self, *groups: Iterable[int], mode: Mode = "blackhole") -> None:
        """Heal, then cut every link between nodes of different groups.

        Nodes not named in any group form a group of their own each.
        """
        self.heal()
        group_of: dict[int, int] = {}
        for g, members in enumerate(groups):
            for node in members:
                group_of[node] = g
        n = len(self.nodes)
        for i in range(n):
            for j in range(i + 1, n):
                if group_of.get(i, -1 - i) != group_of.get(j, -1 - j):
                    self.cut(i, j, mode)

    def isolate(self, i: int, mode: Mode = "blackhole") -> None:
        self.partition([i], [j for j in range(len(self.nodes)) if j != i], mode=mode)

    def heal(self) -> None:
        """Unblock every link (delays stay as set)."""
        for link in self.links.values():
            link.unblock("both")

    def set_delay(self, seconds: float, jitter: float = 0.0) -> None:
        for link in self.links.values():
            link.set_delay(seconds, jitter)
