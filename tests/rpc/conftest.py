"""Run `async def` tests of tests/rpc on a fresh event loop, without pytest-asyncio.

Each coroutine test gets its own `asyncio.run` with a hard time bound, so a
hung test fails quickly instead of eating the suite's budget. Tests that take
the `loop_kind` fixture run once on asyncio and once on uvloop (if installed).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from rpc.loop import new_event_loop, uvloop_available

TEST_TIMEOUT = 20.0

LOOP_KINDS = ["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kwargs: dict[str, Any] = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames
    }
    use_uvloop = kwargs.get("loop_kind") == "uvloop"
    with asyncio.Runner(loop_factory=lambda: new_event_loop(use_uvloop)) as runner:
        runner.run(asyncio.wait_for(func(**kwargs), TEST_TIMEOUT))
    return True
