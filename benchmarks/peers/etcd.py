"""A 3-member etcd cluster on 127.0.0.1 and a minimal keep-alive HTTP/1.1
client for its JSON gateway (grpc-gateway, v3 API).

    POST /v3/kv/put    {"key": b64, "value": b64}
    POST /v3/kv/range  {"key": b64}            (linearizable by default)
    POST /v3/maintenance/status {}             (member_id, leader)

``HttpConn`` is one persistent TCP connection (asyncio streams) that sends one
request at a time and reads the reply (Content-Length or chunked). The
benchmark gives each concurrent client its own connection: a pool of N
connections for N clients, all to the leader's client URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import Procs


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class HttpError(Exception):
    pass


class HttpConn:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout)

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.wait_for(self._post(path, payload), self.timeout)

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        body = json.dumps(payload, separators=(",", ":")).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        try:
            self.writer.write(head.encode() + body)
            status_line = await self.reader.readline()
            if not status_line:
                raise HttpError("connection closed")
            status = int(status_line.split()[1])
            length = -1
            chunked = close = False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, val = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                val = val.strip()
                if name == "content-length":
                    length = int(val)
                elif name == "transfer-encoding" and "chunked" in val.lower():
                    chunked = True
                elif name == "connection" and val.lower() == "close":
                    close = True
            if chunked:
                parts = []
                while True:
                    size = int((await self.reader.readline()).split(b";")[0], 16)
                    if size == 0:
                        await self.reader.readline()
                        break
                    parts.append(await self.reader.readexactly(size))
                    await self.reader.readline()
                data = b"".join(parts)
            elif length >= 0:
                data = await self.reader.readexactly(length)
            else:
                data = await self.reader.read()
                close = True
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        if status != 200:
            raise HttpError(f"HTTP {status}: {data[:200]!r}")
        result: dict[str, Any] = json.loads(data) if data else {}
        return result

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class EtcdCluster:
    def __init__(self, procs: Procs, workdir: Path, client_ports: list[int],
                 peer_ports: list[int], etcd_bin: str = "etcd") -> None:
        self.procs = procs
        self.workdir = workdir
        self.client_ports = client_ports
        self.peer_ports = peer_ports
        self.etcd_bin = etcd_bin
        self.members: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def available() -> str | None:
        return shutil.which("etcd")

    def client_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.client_ports]

    def start(self) -> None:
        n = len(self.client_ports)
        token = f"bench-{time.time_ns()}"
        initial = ",".join(f"m{i}=http://127.0.0.1:{self.peer_ports[i]}" for i in range(n))
        for i in range(n):
            argv = [
                self.etcd_bin, "--name", f"m{i}",
                "--data-dir", str(self.workdir / f"m{i}.etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--logger", "zap", "--log-level", "warn",
            ]
            self.members.append(
                self.procs.start(argv, str(self.workdir / f"m{i}.log")))

    def pids(self) -> list[int]:
        return [p.pid for p in self.members]

    async def wait_leader(self, timeout: float = 30.0) -> int:
        """Index of the leader member once a put succeeds through it."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for i, p in enumerate(self.members):
                if p.poll() is not None:
                    raise RuntimeError(f"etcd member {i} exited with {p.returncode}; "
                                       f"see {self.workdir}/m{i}.log")
            for i, port in enumerate(self.client_ports):
                conn = HttpConn("127.0.0.1", port, timeout=2.0)
                try:
                    st = await conn.post("/v3/maintenance/status", {})
                    if st.get("leader") and st.get("leader") == st["header"].get("member_id"):
                        await conn.post("/v3/kv/put", {"key": b64("warmup"), "value": b64("x")})
                        return i
                except (TimeoutError, OSError, HttpError, ValueError) as exc:
                    last = repr(exc)
                finally:
                    conn.close()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"etcd: no leader within {timeout:g} s ({last})")

    def stop(self) -> None:
        self.procs.stop(self.members)
        self.members = []


def check_perf(endpoints: list[str], load: str, timeout: float = 150.0) -> str:
    """Runs ``etcdctl check perf --load=LOAD`` and returns its output."""
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        return "etcdctl not found"
    try:
        out = subprocess.run(
            [etcdctl, "--endpoints", ",".join(endpoints), "check", "perf", f"--load={load}"],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return (out.stdout + out.stderr).strip()
    except subprocess.TimeoutExpired as exc:
        return f"etcdctl check perf timed out after {timeout:g} s: {exc.stdout!r}"
