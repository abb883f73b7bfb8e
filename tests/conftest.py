"""Test-suite wide settings.

`async def` tests run without pytest-asyncio: each gets a fresh event loop
(`asyncio.Runner`) and a hard time bound, so a hung test fails quickly
instead of eating the suite's budget. A test taking the `loop_kind` fixture
(tests/rpc) runs on the loop it names.

Hypothesis runs derandomized by default, so `make test` is the same run on
every machine and a CI failure reproduces locally; set
HYPOTHESIS_PROFILE=explore to search with fresh random examples (and the
example database) while developing.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import pytest
from hypothesis import settings

from rpc.loop import new_event_loop

ASYNC_TEST_TIMEOUT = 20.0

settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


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
        runner.run(asyncio.wait_for(func(**kwargs), ASYNC_TEST_TIMEOUT))
    return True


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite the expected output of the data-driven scenario files "
        "(tests/raft/testdata/*.txt) from the actual output (also: SCENARIO_REWRITE=1)",
    )
