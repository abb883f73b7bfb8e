"""``rpc.Promise``: callbacks run synchronously at settle time; otherwise it
behaves as an ``asyncio.Future`` where the hot paths use one."""

from __future__ import annotations

import asyncio
import logging

import pytest

from rpc import Promise


def test_callbacks_run_at_once_in_order_and_late_ones_immediately() -> None:
    p: Promise[int] = Promise()
    seen: list[str] = []
    p.add_done_callback(lambda q: seen.append(f"a{q.result()}"))
    p.add_done_callback(lambda q: seen.append(f"b{q.result()}"))
    assert not p.done() and seen == []
    p.set_result(7)
    assert seen == ["a7", "b7"]  # before set_result returned: no loop involved
    p.add_done_callback(lambda q: seen.append("late"))
    assert seen == ["a7", "b7", "late"]


def test_result_exception_and_cancel_follow_asyncio_future() -> None:
    pending: Promise[int] = Promise()
    with pytest.raises(asyncio.InvalidStateError):
        pending.result()
    with pytest.raises(asyncio.InvalidStateError):
        pending.exception()

    failed: Promise[int] = Promise()
    failed.set_exception(ValueError("boom"))
    assert isinstance(failed.exception(), ValueError)
    with pytest.raises(ValueError, match="boom"):
        failed.result()
    with pytest.raises(asyncio.InvalidStateError):
        failed.set_result(1)  # settled once only

    cancelled: Promise[int] = Promise()
    assert cancelled.cancel() and cancelled.cancelled() and cancelled.done()
    assert not cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        cancelled.result()
    with pytest.raises(asyncio.CancelledError):
        cancelled.exception()

    resolved: Promise[int] = Promise()
    resolved.set_result(3)
    assert not resolved.cancel() and resolved.exception() is None


def test_a_raising_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p: Promise[int] = Promise()
    seen: list[int] = []

    def bad(_: Promise[int]) -> None:
        raise RuntimeError("callback bug")

    p.add_done_callback(bad)
    p.add_done_callback(lambda q: seen.append(q.result()))
    with caplog.at_level(logging.ERROR, logger="rpc.promise"):
        p.set_result(1)  # does not raise into the settling code
    assert seen == [1]
    assert "callback bug" in caplog.text


async def test_awaiting_a_promise() -> None:
    p: Promise[str] = Promise()
    loop = asyncio.get_running_loop()
    loop.call_soon(p.set_result, "done")
    assert await p == "done"
    assert await p == "done"  # settled: no suspension

    failing: Promise[str] = Promise()
    loop.call_soon(failing.set_exception, KeyError("k"))
    with pytest.raises(KeyError):
        await failing

    # wait_for / gather accept it like any awaitable.
    later: Promise[int] = Promise()
    loop.call_soon(later.set_result, 5)
    assert await asyncio.wait_for(later, 5) == 5


async def test_cancelling_the_awaiting_task_cancels_the_promise() -> None:
    p: Promise[int] = Promise()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(p, 0.01)
    assert p.cancelled()
