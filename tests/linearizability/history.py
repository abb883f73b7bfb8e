"""Histories of KV operations, and a recorder that builds them in live tests.

A history is a list of :class:`Operation`: who called what on which key,
what it returned, and the interval ``[call, ret]`` (``time.monotonic``
seconds) in which it took effect. An operation whose outcome is unknown
(the client timed out, crashed or gave up) has ``ret == math.inf`` and no
output: it may or may not have taken effect, at any time after its call.

The checker (:mod:`tests.linearizability.checker`) decides whether a
history is linearizable with respect to the KV model; this module only
describes and records histories, so it can be used from asyncio tests,
threads, or by hand.

Typical use in an async test::

    rec = HistoryRecorder()
    h = rec.call(client=3, kind="put", key="k", value="v")
    try:
        await clerk.put("k", "v")
    except ClerkTimeout:
        rec.fail_unknown(h)          # may or may not have happened
    else:
        rec.ok(h)
    ...
    result = check(rec.history())
    assert result.ok, result.explanation

or, equivalently, ``await rec.run(3, "put", "k", "v", clerk.put("k", "v"))``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

__all__ = [
    "HistoryRecorder",
    "OpHandle",
    "OpKind",
    "Operation",
    "history_from_json",
    "history_to_json",
]


class OpKind(StrEnum):
    """The operations of the KV model (all of them touch exactly one key)."""

    GET = "get"
    PUT = "put"
    APPEND = "append"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    ``value`` is the argument of put/append (``None`` for get/delete);
    ``output`` is what a get returned (``None`` for writes, and for any
    operation whose outcome is unknown). ``ret == math.inf`` means the
    outcome is unknown.
    """

    client: Hashable
    kind: OpKind
    key: str
    value: str | None
    output: str | None
    call: float
    ret: float

    @property
    def unknown(self) -> bool:
        """True when the client never learned whether the operation happened."""
        return math.isinf(self.ret)

    def describe(self, t0: float = 0.0) -> str:
        """One line: ``client 3  put('k', 'v')  [0.001200, 0.003400]`` (times minus t0)."""
        if self.kind in (OpKind.PUT, OpKind.APPEND):
            args = f"{self.key!r}, {_short(self.value)}"
        else:
            args = repr(self.key)
        text = f"client {self.client!s:>4}  {self.kind.value}({args})"
        if self.unknown:
            text += " -> ?(unknown outcome)"
        elif self.kind is OpKind.GET:
            text += f" -> {_short(self.output)}"
        ret = "inf" if self.unknown else f"{self.ret - t0:.6f}"
        return f"{text}  [{self.call - t0:.6f}, {ret}]"


def _short(value: str | None, limit: int = 40) -> str:
    if value is None:
        return "None"
    if len(value) <= limit:
        return repr(value)
    return repr(value[: limit // 2]) + f"...({len(value)} chars)..." + repr(value[-limit // 2 :])


def make_op(
    client: Hashable,
    kind: OpKind | str,
    key: str,
    value: str | None = None,
    output: str | None = None,
    call: float = 0.0,
    ret: float = math.inf,
) -> Operation:
    """Build an :class:`Operation`, validating kind, arguments and times."""
    k = OpKind(kind)
    if k in (OpKind.PUT, OpKind.APPEND):
        if value is None:
            raise ValueError(f"{k.value} needs a value")
    elif value is not None:
        raise ValueError(f"{k.value} takes no value (got {value!r})")
    if k is not OpKind.GET and output is not None:
        raise ValueError(f"{k.value} has no output (got {output!r})")
    if math.isnan(call) or math.isnan(ret) or math.isinf(call):
        raise ValueError(f"bad times [{call}, {ret}]")
    if ret < call:
        raise ValueError(f"operation returns before its call: [{call}, {ret}]")
    if k is OpKind.GET and not math.isinf(ret) and output is None:
        raise ValueError("a completed get needs an output ('' for a missing key)")
    return Operation(client, k, key, value, output, float(call), float(ret))


@dataclass(slots=True)
class OpHandle:
    """An operation in flight, as returned by :meth:`HistoryRecorder.call`."""

    index: int
    client: Hashable
    kind: OpKind
    key: str
    value: str | None
    call: float
    ret: float | None = None
    output: str | None = None
    discarded: bool = False


class HistoryRecorder:
    """Records calls and returns with ``time.monotonic()``; thread-safe.

    * :meth:`call` before sending the request (the call time must be taken
      before anything can reach a server);
    * :meth:`ok` as soon as the reply arrives (get: with its value);
    * :meth:`fail_unknown` when the client gave up without knowing whether
      the operation took effect (timeouts, lost connections);
    * :meth:`discard` only when the operation certainly did *not* take effect
      (e.g. it was refused before being sent).

    Operations still in flight when :meth:`history` is called count as
    unknown-outcome.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: list[OpHandle] = []

    def call(
        self, client: Hashable, kind: OpKind | str, key: str, value: str | None = None
    ) -> OpHandle:
        """Record the call of an operation; returns its handle."""
        k = OpKind(kind)
        make_op(client, k, key, value)  # validate arguments early
        with self._lock:
            handle = OpHandle(len(self._ops), client, k, key, value, self._clock())
            self._ops.append(handle)
        return handle

    def ok(self, handle: OpHandle, output: str | None = None) -> None:
        """Record a successful return (``output`` is the value a get returned)."""
        now = self._clock()
        with self._lock:
            self._check_open(handle)
            if handle.kind is OpKind.GET and output is None:
                raise ValueError("a get returns a value ('' for a missing key)")
            handle.ret = now
            handle.output = output if handle.kind is OpKind.GET else None

    def fail_unknown(self, handle: OpHandle) -> None:
        """The client does not know whether the operation took effect."""
        with self._lock:
            self._check_open(handle)
            handle.ret = math.inf

    def discard(self, handle: OpHandle) -> None:
        """The operation certainly did not take effect: leave it out of the history."""
        with self._lock:
            self._check_open(handle)
            handle.discarded = True

    async def run(
        self,
        client: Hashable,
        kind: OpKind | str,
        key: str,
        value: str | None,
        awaitable: Awaitable[Any],
    ) -> Any:
        """Record ``awaitable`` (a clerk call) as one operation.

        Success records the result (for a get); any exception, including
        cancellation, records an unknown outcome and is re-raised.
        """
        handle = self.call(client, kind, key, value)
        try:
            result = await awaitable
        except BaseException:
            self.fail_unknown(handle)
            raise
        self.ok(handle, result if handle.kind is OpKind.GET else None)
        return result

    def _check_open(self, handle: OpHandle) -> None:
        if handle.ret is not None or handle.discarded:
            raise ValueError(f"operation {handle.index} was already completed")

    def history(self) -> list[Operation]:
        """A snapshot of the history so far (in-flight operations are unknown)."""
        with self._lock:
            handles = list(self._ops)
        return [
            make_op(
                h.client,
                h.kind,
                h.key,
                h.value,
                h.output,
                h.call,
                math.inf if h.ret is None else h.ret,
            )
            for h in handles
            if not h.discarded
        ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)


def history_to_json(history: Iterable[Operation]) -> str:
    """Serialize a history (e.g. to save a failing one next to a test log)."""
    rows = [
        {
            "client": op.client if isinstance(op.client, int | str) else repr(op.client),
            "kind": op.kind.value,
            "key": op.key,
            "value": op.value,
            "output": op.output,
            "call": op.call,
            "ret": None if op.unknown else op.ret,
        }
        for op in history
    ]
    return json.dumps(rows, indent=0)


def history_from_json(text: str) -> list[Operation]:
    """Inverse of :func:`history_to_json`."""
    rows = json.loads(text)
    return [
        make_op(
            r["client"],
            r["kind"],
            r["key"],
            r["value"],
            r["output"],
            r["call"],
            math.inf if r["ret"] is None else r["ret"],
        )
        for r in rows
    ]


def with_times(op: Operation, call: float, ret: float) -> Operation:
    """A copy of ``op`` with a different interval (for tests)."""
    return replace(op, call=call, ret=ret)
