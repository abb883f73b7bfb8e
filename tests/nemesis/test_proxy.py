"""Tests of the fault-injecting TCP proxy, against tiny local servers."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nemesis.proxy import LinkProxy, ProxyMesh, ProxyThread, SyncLink

TIMEOUT = 0.3  # how long "nothing arrives" is waited for


class _Handler(socketserver.BaseRequestHandler):
    """Echoes everything back; remembers what it received."""

    def handle(self) -> None:
        server: EchoServer = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        sock.settimeout(5)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                with server.lock:
                    server.received += data
                if server.echo:
                    sock.sendall(data)
        except OSError:
            return


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.received = b""
        self.echo = True
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return (str(host), int(port))

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def proxies() -> Iterator[ProxyThread]:
    with ProxyThread() as pt:
        yield pt


def connect(link: SyncLink) -> socket.socket:
    sock = socket.create_connection(link.address, timeout=5)
    sock.settimeout(5)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def nothing_arrives(sock: socket.socket) -> bool:
    sock.settimeout(TIMEOUT)
    try:
        data = sock.recv(100)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)
    del data
    return False


def is_closed(sock: socket.socket) -> bool:
    """True if the peer closed or reset the connection (within a second)."""
    sock.settimeout(1)
    try:
        return sock.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def wait_for(cond: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.01)
    return False


def test_forwards_both_ways_and_counts(echo: EchoServer, proxies: ProxyThread) -> None:
    link = proxies.add_link(echo.address)
    with connect(link) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        payload = bytes(range(256)) * 1000
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
    stats = link.stats()
    assert stats.bytes_a_to_b == stats.bytes_b_to_a == 5 + len(payload)
    assert stats.accepted == 1
    assert wait_for(lambda: link.stats().active == 0)


def test_blackhole_block_and_unblock(echo: EchoServer, proxies: ProxyThread) -> None:
    link = proxies.add_link(echo.address)
    sock = connect(link)
    sock.sendall(b"before")
    assert recv_exactly(sock, 6) == b"before"

    link.block()
    sock.sendall(b"lost")
    assert nothing_arrives(sock)
    fresh = connect(link)  # new connections are accepted but black-holed too
    fresh.sendall(b"also lost")
    assert nothing_arrives(fresh)
    assert link.stats().dropped_a_to_b == len(b"lost") + len(b"also lost")
    assert echo.received == b"before"

    link.unblock()
    # the streams that lost bytes are closed (their framing is broken) ...
    assert is_closed(sock) and is_closed(fresh)
    assert link.stats().closed_tainted == 2
    # ... and new connections work again
    with connect(link) as again:
        again.sendall(b"after")
        assert recv_exactly(again, 5) == b"after"
    sock.close()
    fresh.close()


def test_untouched_connection_survives_a_blackhole(
    echo: EchoServer, proxies: ProxyThread
) -> None:
    link = proxies.add_link(echo.address)
    with connect(link) as sock:
        link.block()
        link.unblock()
        sock.sendall(b"still fine")
        assert recv_exactly(sock, 10) == b"still fine"


def test_reset_block(echo: EchoServer, proxies: ProxyThread) -> None:
    link = proxies.add_link(echo.address)
    sock = connect(link)
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    link.block(mode="reset")
    assert is_closed(sock)
    sock.close()
    # new connections are accepted and reset at once
    with connect(link) as refused:
        assert is_closed(refused)
    assert wait_for(lambda: link.stats().refused >= 1)
    link.unblock()
    with connect(link) as sock2:
        sock2.sendall(b"back")
        assert recv_exactly(sock2, 4) == b"back"
    with pytest.raises(ValueError):
        link.block("a_to_b", mode="reset")


def test_one_way_block_a_to_b(echo: EchoServer, proxies: ProxyThread) -> None:
    link = proxies.add_link(echo.address)
    with connect(link) as sock:
        link.block("a_to_b")
        sock.sendall(b"request")
        assert nothing_arrives(sock)
        assert echo.received == b""  # it never reached the server
        assert link.stats().dropped_a_to_b == 7


def test_one_way_block_b_to_a(echo: EchoServer, proxies: ProxyThread) -> None:
    link = proxies.add_link(echo.address)
    with connect(link) as sock:
        link.block("b_to_a")
        sock.sendall(b"request")
        assert wait_for(lambda: echo.received == b"request")  # the server got it
        assert nothing_arrives(sock)  # but its reply is lost
        assert wait_for(lambda: link.stats().dropped_b_to_a == 7)
        link.unblock("b_to_a")
        assert is_closed(sock)


def test_delay(echo: EchoServer, proxies: ProxyThread) -> None:
    link = proxies.add_link(echo.address)
    with connect(link) as sock:
        sock.sendall(b"warm")
        recv_exactly(sock, 4)
        link.set_delay(0.1)  # each direction: 0.2 s round trip
        start = time.monotonic()
        sock.sendall(b"slow")
        assert recv_exactly(sock, 4) == b"slow"
        slow = time.monotonic() - start
        assert slow >= 0.19

        # delay is latency, not bandwidth: pipelined chunks arrive together
        start = time.monotonic()
        for i in range(5):
            sock.sendall(b"%d" % i)
            time.sleep(0.01)
        assert recv_exactly(sock, 5) == b"01234"  # order kept
        assert time.monotonic() - start < 0.2 + 0.05 * 5 + 0.2

        link.set_delay(0.0)
        start = time.monotonic()
        sock.sendall(b"fast")
        assert recv_exactly(sock, 4) == b"fast"
        assert time.monotonic() - start < slow
    with pytest.raises(ValueError):
        link.set_delay(-1)


def test_target_down_resets_the_client(proxies: ProxyThread) -> None:
    server = EchoServer()
    address = server.address
    server.stop()
    link = proxies.add_link(address)
    with connect(link) as sock:
        assert is_closed(sock)
    assert wait_for(lambda: link.stats().refused == 1)


def test_close_cleans_up(echo: EchoServer) -> None:
    before = set(threading.enumerate())
    pt = ProxyThread()
    link = pt.add_link(echo.address)
    socks = [connect(link) for _ in range(3)]
    for s in socks:
        s.sendall(b"hi")
        assert recv_exactly(s, 2) == b"hi"
    link.block()
    pt.close()
    pt.close()  # idempotent
    for s in socks:
        assert is_closed(s)
        s.close()
    with pytest.raises(OSError):
        socket.create_connection(link.address, timeout=1).close()
    leftover = [t for t in threading.enumerate() if t not in before and t.name == "nemesis-proxy"]
    assert leftover == []
    with pytest.raises(RuntimeError):
        link.unblock()


def test_in_event_loop_no_leaked_tasks() -> None:
    async def main() -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(1024):
                w.write(data)
                await w.drain()
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proxy = LinkProxy(("127.0.0.1", port))
        await proxy.start()
        r, w = await asyncio.open_connection(*proxy.address)
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), 2) == b"ping"
        proxy.block("both")
        w.write(b"gone")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(4), TIMEOUT)
        proxy.set_delay(0.05, jitter=0.05)
        proxy.unblock()
        await proxy.close()
        w.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        current = asyncio.current_task()
        assert [t for t in asyncio.all_tasks() if t is not current and not t.done()] == []

    asyncio.run(main())


def test_mesh_partition_heal_and_config(tmp_path: Path, proxies: ProxyThread) -> None:
    servers = [EchoServer() for _ in range(3)]
    try:
        mesh = ProxyMesh(proxies, [s.address for s in servers])
        assert len(mesh.links) == 6
        conf = mesh.write_config(0, tmp_path / "node0.conf").read_text().splitlines()
        assert conf[0:2] == ["node0ip=127.0.0.1", f"node0port={servers[0].address[1]}"]
        assert conf[3] == f"node1port={mesh.links[(0, 1)].port}"

        def reaches(i: int, j: int) -> bool:
            with connect(mesh.links[(i, j)]) as sock:
                sock.sendall(b"?")
                return not nothing_arrives(sock)

        mesh.partition([0], [1, 2])
        assert not reaches(0, 1) and not reaches(2, 0)
        assert reaches(1, 2) and reaches(2, 1)
        mesh.heal()
        assert reaches(0, 1) and reaches(2, 0)

        mesh.block_one_way(0, 1)  # 0's messages don't reach 1
        assert mesh.links[(0, 1)].proxy.is_blocked("a_to_b")
        assert mesh.links[(1, 0)].proxy.is_blocked("b_to_a")
        assert not mesh.links[(1, 0)].proxy.is_blocked("a_to_b")
        mesh.isolate(2, mode="reset")
        assert mesh.links[(2, 0)].proxy.is_blocked("a_to_b")
        assert not mesh.links[(0, 1)].proxy.is_blocked("a_to_b")  # partition() heals first
        mesh.heal()
        assert reaches(2, 0)
    finally:
        for s in servers:
            s.stop()
