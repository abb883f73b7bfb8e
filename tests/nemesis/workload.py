"""Workloads for the nemesis runs: recorded concurrent clients, final checks, fuzz.

:class:`Workload` runs ``clients`` coroutines over ``clerks`` ``AsyncClerk``s
(several coroutines share a clerk, so one clerk has many operations in
flight). Each coroutine loops: pick a key, pick get / put / append, record the
operation with :class:`~tests.linearizability.history.HistoryRecorder`.
Every written value is unique (``<kind><client>.<n>;``), so the checker can
tell writes apart and appended tokens can be counted.

Two key families:

* ``c0..`` *mixed* keys: get, put and append (the linearizability check);
* ``a0..`` *append-only* keys: get and append only. After healing, each is
  read with a fresh clerk: every acknowledged append must be present exactly
  once, an unknown-outcome append at most once, and nothing else may appear.

Few keys give high contention, many keys spread the load; the checker's
limits (its module doc) ask for >= 40 % gets and several keys, which the
defaults keep.

:class:`Fuzzer` sends bad input to the nodes' ports on raw sockets while the
workload runs: random bytes, huge length prefixes (0xFFFFFFFF, just over the
64 MiB limit), truncated frames, broken header lengths, unknown services and
methods, undecodable bodies. The nodes must keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

from clerk import AsyncClerk, ClerkTimeout
from rpc import rpc_pb2
from rpc.codec import encode, encode_varint
from tests.linearizability.history import HistoryRecorder, Operation, OpKind

__all__ = ["Fuzzer", "Workload", "WorkloadSpec", "check_appends"]


@dataclass(frozen=True)
class WorkloadSpec:
    clients: int = 8  # coroutines
    clerks: int = 2  # AsyncClerks they share
    mixed_keys: int = 3  # c0..: get/put/append
    append_keys: int = 2  # a0..: get/append only
    get_ratio: float = 0.5
    put_ratio: float = 0.2  # of the mixed keys' writes ... see _pick
    clerk_timeout: float = 10.0
    think: tuple[float, float] = (0.0, 0.01)  # pause between a client's operations

    def keys(self) -> tuple[list[str], list[str]]:
        return ([f"c{i}" for i in range(self.mixed_keys)],
                [f"a{i}" for i in range(self.append_keys)])


@dataclass
class Workload:
    servers: Sequence[tuple[str, int]]
    spec: WorkloadSpec
    seed: int
    recorder: HistoryRecorder = field(default_factory=HistoryRecorder)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed ^ 0x5EED)
        self.mixed, self.appendonly = self.spec.keys()
        self._clerks: list[AsyncClerk] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Run the clients until ``stop`` is set; each finishes its current operation."""
        self._clerks = [
            AsyncClerk(self.servers, timeout=self.spec.clerk_timeout,
                       client_id=self.rng.getrandbits(62) + 1)
            for _ in range(self.spec.clerks)
        ]
        try:
            await asyncio.gather(*(self._client(c, stop) for c in range(self.spec.clients)))
        finally:
            await asyncio.gather(*(ck.close() for ck in self._clerks), return_exceptions=True)

    def _pick(self, rng: random.Random) -> tuple[str, str]:
        keys = self.mixed + self.appendonly
        key = rng.choice(keys)
        r = rng.random()
        if r < self.spec.get_ratio:
            return "get", key
        if key in self.mixed and r < self.spec.get_ratio + self.spec.put_ratio:
            return "put", key
        return "append", key

    async def _client(self, c: int, stop: asyncio.Event) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        ck = self._clerks[c % len(self._clerks)]
        n = 0
        while not stop.is_set():
            kind, key = self._pick(rng)
            n += 1
            value = None if kind == "get" else f"{kind[0]}{c}.{n};"
            coro: Awaitable[object]
            if kind == "get":
                coro = get_text(ck, key)
            elif kind == "put":
                assert value is not None
                coro = ck.put(key, value)
            else:
                assert value is not None
                coro = ck.append(key, value)
            try:
                await self.recorder.run(c, kind, key, value, coro)
                self.counts[f"{kind}_ok"] += 1
            except ClerkTimeout:
                self.counts[f"{kind}_unknown"] += 1
            lo, hi = self.spec.think
            if hi > 0:
                await asyncio.sleep(rng.uniform(lo, hi))

    async def final_reads(self, timeout: float = 30.0,
                          servers: Sequence[tuple[str, int]] | None = None) -> dict[str, str]:
        """Read every key with a fresh clerk (recorded too, as client 'final')
        given ``servers`` (default: the workload's; after membership
        changes, the current members')."""
        values: dict[str, str] = {}
        async with AsyncClerk(servers or self.servers, timeout=timeout) as ck:
            for key in self.mixed + self.appendonly:
                values[key] = await self.recorder.run("final", "get", key, None,
                                                      get_text(ck, key))
        return values

    def history(self) -> list[Operation]:
        return self.recorder.history()


async def get_text(ck: AsyncClerk, key: str) -> str:
    """``ck.get(key)`` as text (the clerk returns bytes; the workload writes
    text, which the history and the checker compare)."""
    return (await ck.get(key)).decode()


def check_appends(history: Sequence[Operation], final: dict[str, str],
                  keys: Sequence[str]) -> list[str]:
    """Acknowledged appends present exactly once; unknown ones at most once."""
    problems: list[str] = []
    for key in keys:
        appends = [op for op in history
                   if op.key == key and op.kind is OpKind.APPEND and op.value is not None]
        acked = {op.value for op in appends if op.value is not None and not op.unknown}
        unknown = {op.value for op in appends if op.value is not None and op.unknown}
        tokens = Counter(t + ";" for t in final.get(key, "").split(";") if t)
        for v in sorted(acked, key=str):
            if tokens[v] != 1:
                problems.append(f"key {key!r}: acknowledged append {v!r} present "
                                f"{tokens[v]} times in the final value (must be 1)")
        for v in sorted(unknown, key=str):
            if tokens[v] > 1:
                problems.append(f"key {key!r}: unknown-outcome append {v!r} present "
                                f"{tokens[v]} times (at most 1)")
        for t in sorted(tokens):
            if t not in acked and t not in unknown:
                problems.append(f"key {key!r}: token {t!r} in the final value was never "
                                f"appended")
    return problems


# -- fuzzing -------------------------------------------------------------------


def _frame(service: str, method: str, body: bytes, call_id: int = 7) -> bytes:
    header = rpc_pb2.Header(kind=rpc_pb2.REQUEST, call_id=call_id, service=service,
                            method=method, timeout_ms=1000)
    return encode(header, body)


@dataclass
class Fuzzer:
    """Sends malformed input to the nodes on raw sockets until stopped."""

    servers: Sequence[tuple[str, int]]
    seed: int
    interval: float = 0.05
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed ^ 0xF022)

    def _case(self) -> tuple[str, bytes, bool]:
        """(name, bytes to send, whether to wait for an answer)."""
        rng = self.rng
        garbage = rng.randbytes(rng.randint(1, 2048))
        cases: list[tuple[str, bytes, bool]] = [
            ("random_bytes", garbage, False),
            ("huge_length_ffffffff", b"\xff\xff\xff\xff" + garbage, False),
            ("length_over_limit", (64 * 1024 * 1024 + 1).to_bytes(4, "big") + garbage, False),
            ("truncated_frame", (5000).to_bytes(4, "big") + garbage[:100], False),
            ("header_longer_than_frame",
             (10).to_bytes(4, "big") + encode_varint(500) + b"x" * 9, False),
            ("bad_varint", (12).to_bytes(4, "big") + b"\xff" * 12, False),
            ("garbage_header", len(garbage).to_bytes(4, "big") + garbage, False),
            ("zero_length", b"\x00\x00\x00\x00" * 4, False),
            ("unknown_service", _frame("no.Such", "Get", b""), True),
            ("unknown_method", _frame("kvserver.KvServer", "Nope", b""), True),
            ("bad_body_get", _frame("kvserver.KvServer", "Get", b"\xff\xff\xff\x0f\x08"), True),
            ("response_kind_to_server",
             encode(rpc_pb2.Header(kind=rpc_pb2.RESPONSE, call_id=3), b"zz"), False),
        ]
        return rng.choice(cases)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            host, port = self.rng.choice(list(self.servers))
            name, data, answer = self._case()
            split = self.rng.random() < 0.3  # sometimes dribble it in two pieces
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), 1.0)
            except (OSError, TimeoutError):
                self.counts["connect_failed"] += 1
            else:
                try:
                    if split and len(data) > 1:
                        cut = self.rng.randrange(1, len(data))
                        writer.write(data[:cut])
                        await asyncio.wait_for(writer.drain(), 1.0)
                        await asyncio.sleep(0.01)
                        data = data[cut:]
                    writer.write(data)
                    await asyncio.wait_for(writer.drain(), 1.0)
                    if answer:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(reader.read(4096), 0.5)
                    self.counts[name] += 1
                except (OSError, TimeoutError):
                    self.counts[name] += 1  # a reset is a fine answer to garbage
                finally:
                    writer.transport.abort()
            await asyncio.sleep(self.interval)

    @property
    def sent(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "connect_failed")
