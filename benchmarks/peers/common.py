"""Shared pieces of the comparison benchmark: processes, CPU, statistics, load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY_LEN = 16


def key_of(i: int, keyspace: int) -> str:
    """A 16-byte key: 'k' + 15 digits."""
    return f"k{i % keyspace:0{KEY_LEN - 1}d}"


# -- processes -----------------------------------------------------------------

class Procs:
    """Every process this benchmark started, so all can be stopped by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], log_path: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **kwargs)
        self.procs.append(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        self.procs.append(proc)

    def stop(self, procs: Sequence[subprocess.Popen[bytes]] | None = None,
             grace: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. By pid only."""
        targets = list(self.procs if procs is None else procs)
        for p in targets:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in targets:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs = [p for p in self.procs if p not in targets]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2:].split()
        children.setdefault(int(rest[1]), []).append(int(name))
    return children


def _proc_ticks(pid: int, with_waited_children: bool) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    # Fields after "(comm) ": state=3 ... utime=14 stime=15 cutime=16 cstime=17.
    rest = data[data.rfind(b")") + 2:].split()
    ticks = int(rest[11]) + int(rest[12])
    if with_waited_children:
        ticks += int(rest[13]) + int(rest[14])
    return ticks


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of the pids and all their live descendants (plus the
    children they have already waited for), from /proc/<pid>/stat."""
    children = _children_map()
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _proc_ticks(pid, with_waited_children=True)
        todo.extend(children.get(pid, []))
    return total / CLK_TCK


# -- statistics ------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def summarize(latencies_s: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    lat = sorted(latencies_s)
    ms = 1000.0
    return {
        "ops": len(lat),
        "errors": errors,
        "elapsed_s": round(elapsed, 4),
        "ops_per_s": round(len(lat) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(lat, 50) * ms, 3),
        "p99_ms": round(percentile(lat, 99) * ms, 3),
        "p999_ms": round(percentile(lat, 99.9) * ms, 3),
        "max_ms": round(lat[-1] * ms, 3) if lat else float("nan"),
    }


# -- the asyncio closed-loop load generator ---------------------------------------

@dataclass
class Workload:
    name: str
    kind: str            # "put", "get" or "mix" (50/50, even op numbers put)
    clients: int
    ops: int


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    first_error: str = ""


def op_is_put(kind: str, i: int) -> bool:
    return kind == "put" or (kind == "mix" and i % 2 == 0)


async def closed_loop(
    wl: Workload,
    keyspace: int,
    value: str,
    do_put: Callable[[int, str, str], Awaitable[None]],
    do_get: Callable[[int, str], Awaitable[Any]],
    time_limit: float,
) -> LoadResult:
    """``wl.clients`` coroutines, each issuing its next operation as soon as the
    previous one completes, until ``wl.ops`` operations are done (or the time
    limit). ``do_put(worker, key, value)`` / ``do_get(worker, key)``: the worker
    index lets a system use a per-worker connection or client."""
    res = LoadResult()
    counter = iter(range(wl.ops))
    perf = time.perf_counter
    lats = res.latencies

    async def worker(w: int) -> None:
        for i in counter:
            key = key_of(i, keyspace)
            t0 = perf()
            try:
                if op_is_put(wl.kind, i):
                    await do_put(w, key, value)
                else:
                    await do_get(w, key)
            except Exception as exc:  # counted, the run goes on
                res.errors += 1
                if not res.first_error:
                    res.first_error = f"{type(exc).__name__}: {exc}"
                continue
            lats.append(perf() - t0)

    start = perf()
    tasks = [asyncio.ensure_future(worker(w)) for w in range(wl.clients)]
    done, pending = await asyncio.wait(tasks, timeout=time_limit)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        res.first_error = res.first_error or f"time limit {time_limit:g} s reached"
    res.elapsed = perf() - start
    for t in done:
        if t.exception() is not None and not res.first_error:
            res.first_error = repr(t.exception())
    return res
