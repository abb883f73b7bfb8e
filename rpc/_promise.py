"""``Promise``: a future whose callbacks run synchronously when it settles.

An ``asyncio.Future`` schedules each done callback for a later loop
iteration. Where an answer passes through several hands (the Raft node
resolves a proposal, the KV service turns it into a reply, the provider
writes the reply), each hand costs an iteration, and on a busy loop an
iteration is everything else that is ready to run. A ``Promise`` calls its
callbacks at once, in the code that settles it, so the reply is on its way
before the settling code goes on.

It has the parts of the ``asyncio.Future`` API that such code uses
(``done``, ``cancelled``, ``result``, ``exception``, ``set_result``,
``set_exception``, ``cancel``, ``add_done_callback``) and is awaitable. It
is not thread-safe: settle it on its loop's thread. A callback that raises
is logged; the others still run, and the settling code never sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, Generic, TypeVar

__all__ = ["Promise"]

log = logging.getLogger("rpc.promise")

T = TypeVar("T")

_PENDING = 0
_RESOLVED = 1
_FAILED = 2
_CANCELLED = 3


class Promise(Generic[T]):
    __slots__ = ("_callbacks", "_state", "_value")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Promise[T]], object]] | None = None

    def __repr__(self) -> str:
        state = ("pending", "resolved", "failed", "cancelled")[self._state]
        return f"<Promise {state}>"

    # -- reading ------------------------------------------------------------

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> T:
        """The value; raises the exception it failed with, ``CancelledError``,
        or ``InvalidStateError`` while pending (as ``asyncio.Future``)."""
        state = self._state
        if state == _RESOLVED:
            return self._value  # type: ignore[no-any-return]
        if state == _FAILED:
            raise self._value
        if state == _CANCELLED:
            raise asyncio.CancelledError()
        raise asyncio.InvalidStateError("result is not set")

    def exception(self) -> BaseException | None:
        state = self._state
        if state == _FAILED:
            return self._value  # type: ignore[no-any-return]
        if state == _RESOLVED:
            return None
        if state == _CANCELLED:
            raise asyncio.CancelledError()
        raise asyncio.InvalidStateError("exception is not set")

    # -- settling -------------------------------------------------------------

    def set_result(self, value: T) -> None:
        self._settle(_RESOLVED, value)

    def set_exception(self, exc: BaseException) -> None:
        if isinstance(exc, type):
            exc = exc()
        self._settle(_FAILED, exc)

    def cancel(self) -> bool:
        if self._state != _PENDING:
            return False
        self._settle(_CANCELLED, None)
        return True

    def _settle(self, state: int, value: Any) -> None:
        if self._state != _PENDING:
            raise asyncio.InvalidStateError(f"{self!r} is already settled")
        self._state = state
        self._value = value
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for fn in callbacks:
                _run(fn, self)

    def add_done_callback(self, fn: Callable[[Promise[T]], object]) -> None:
        """Call ``fn(self)`` when settled: now, if it is already."""
        if self._state != _PENDING:
            _run(fn, self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    # -- awaiting -------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        if self._state == _PENDING:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.add_done_callback(partial(_wake, waiter))
            try:
                yield from waiter.__await__()
            except asyncio.CancelledError:
                # As with an asyncio.Future: cancelling the awaiting task
                # cancels what it awaits.
                self.cancel()
                raise
        return self.result()


def _run(fn: Callable[[Promise[Any]], object], promise: Promise[Any]) -> None:
    try:
        fn(promise)
    except Exception:
        log.exception("callback %r of %r raised", fn, promise)


def _wake(waiter: asyncio.Future[None], _: Promise[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)
