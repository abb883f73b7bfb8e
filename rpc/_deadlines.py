"""Many deadlines, few timers.

Every call has a deadline, and almost every call finishes long before it.
A loop timer per call (`call_later` + `cancel`) costs a heap push, a cancel
and a heap pop of the dead entry, with Python-level comparisons on the
standard asyncio loop: about a fifth of a client's CPU time in profiles.
Instead, deadlines are rounded *up* to a slot and each slot has one timer;
items are never removed when their call completes, the fire callback just
skips calls that are no longer pending. A slot is `granularity` seconds for
short delays and grows (in powers of two) with the delay, to about a
sixteenth of it: a 1 s deadline shares its timer with everything due in the
same 40 ms, and a loop serving one call every millisecond or two wakes up
for a dead timer rarely instead of every few milliseconds. A deadline thus
fires never early, and late by at most max(`granularity`, delay / 16) plus
the base granularity.

`loop_deadlines(loop)` is one such set per event loop, shared by every
connection of a provider and every channel: with a connection per client,
each sending a call every few tens of milliseconds, per-connection slots
meant a new timer for almost every call (128 client connections: about
one timer per request on the server and on the client).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["DeadlineBuckets", "loop_deadlines"]

T = TypeVar("T")

DEFAULT_GRANULARITY = 0.005


class DeadlineBuckets(Generic[T]):
    __slots__ = ("_buckets", "_fire", "_granularity", "_handles", "_loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fire: Callable[[list[T]], None],
        granularity: float = DEFAULT_GRANULARITY,
    ) -> None:
        self._loop = loop
        self._fire = fire
        self._granularity = granularity
        self._buckets: dict[int, list[T]] = {}
        self._handles: dict[int, asyncio.TimerHandle] = {}

    def add(self, delay: float, item: T) -> None:
        """Pass `item` to the fire callback `delay` seconds from now (or a bit later)."""
        g = self._granularity
        # Slot width in units of g: the largest power of two <= delay / 16g.
        step = 1 << max(int(delay / (16 * g)).bit_length() - 1, 0)
        slot = (int((self._loop.time() + delay) / g) // step + 1) * step
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._buckets[slot] = [item]
            self._handles[slot] = self._loop.call_at(slot * g, self._run, slot)
        else:
            bucket.append(item)

    def _run(self, slot: int) -> None:
        self._handles.pop(slot, None)
        items = self._buckets.pop(slot, None)
        if items:
            self._fire(items)

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self._buckets.clear()


#: An item of the shared set: the function to call with the item if its
#: deadline passes (it checks whether the call is still pending).
Expiry = tuple[Callable[[Any], None], Any]

_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineBuckets[Expiry]] = (
    weakref.WeakKeyDictionary()
)


def _expire_each(items: list[Expiry]) -> None:
    for expire, item in items:
        expire(item)


def loop_deadlines(loop: asyncio.AbstractEventLoop) -> DeadlineBuckets[Expiry]:
    """The deadline set shared by everything on ``loop``: add
    ``(expire, item)`` and ``expire(item)`` is called once the deadline
    passes. Nothing is ever removed (``cancel_all`` would cancel everyone's):
    ``expire`` skips what already finished."""
    buckets = _PER_LOOP.get(loop)
    if buckets is None:
        buckets = _PER_LOOP[loop] = DeadlineBuckets(loop, _expire_each)
    return buckets
