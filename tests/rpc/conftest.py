"""Tests of tests/rpc that take the `loop_kind` fixture run once on asyncio
and once on uvloop (if installed); tests/conftest.py runs them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpc.loop import uvloop_available

LOOP_KINDS = ["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param
