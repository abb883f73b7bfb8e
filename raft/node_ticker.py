"""Ticks: the node's only sense of time (the core counts ticks, never
seconds). ``LoopTicker`` ticks on an asyncio loop's clock; ``ManualTicker``
ticks only when a test says so, as etcd's application calls ``Node.Tick``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["LoopTicker", "ManualTicker", "Ticker"]


class Ticker(Protocol):
    def start(self, on_tick: Callable[[], None]) -> None:
        """Call ``on_tick`` once per tick from now on (on the running loop)."""

    def stop(self) -> None: ...


class LoopTicker:
    """A tick every ``interval`` seconds at a steady cadence. If the loop
    fell behind, it skips ahead rather than firing a burst of ticks (a burst
    would expire election timers that real time did not)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_tick: Callable[[], None] | None = None

    def start(self, on_tick: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_tick = on_tick
        self._schedule(self._loop.time())

    def _schedule(self, when: float) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_at(when, self._fire, when)

    def _fire(self, scheduled: float) -> None:
        assert self._loop is not None and self._on_tick is not None
        self._on_tick()
        if self._handle is None:  # stopped by on_tick
            return
        nxt = scheduled + self.interval
        now = self._loop.time()
        if nxt < now:
            nxt = now + self.interval
        self._schedule(nxt)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ManualTicker:
    """Ticks when ``tick`` is called (tests: time is whatever they say)."""

    def __init__(self) -> None:
        self._on_tick: Callable[[], None] | None = None
        self.ticks = 0

    def start(self, on_tick: Callable[[], None]) -> None:
        self._on_tick = on_tick

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            if self._on_tick is None:
                return
            self.ticks += 1
            self._on_tick()

    def stop(self) -> None:
        self._on_tick = None
