"""Event loop selection: uvloop where it is installed, asyncio otherwise.

`run(main())` is `asyncio.run` with uvloop's loop when available. Setting
the environment variable RPC_NO_UVLOOP=1 (or passing use_uvloop=False) forces
the standard loop, e.g. to compare the two in benchmarks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["install_uvloop", "loop_name", "new_event_loop", "run", "uvloop_available"]

T = TypeVar("T")


def _uvloop_wanted(use_uvloop: bool | None) -> bool:
    if use_uvloop is None:
        return os.environ.get("RPC_NO_UVLOOP", "") in ("", "0")
    return use_uvloop


def uvloop_available() -> bool:
    """True if uvloop can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _loop_factory(use_uvloop: bool | None) -> Callable[[], asyncio.AbstractEventLoop]:
    if _uvloop_wanted(use_uvloop):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def new_event_loop(use_uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """A new loop: uvloop's if available and wanted, else asyncio's."""
    return _loop_factory(use_uvloop)()


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None,
        debug: bool | None = None) -> T:
    """Run `main` to completion on a fresh loop (uvloop when available)."""
    with asyncio.Runner(debug=debug, loop_factory=_loop_factory(use_uvloop)) as runner:
        return runner.run(main)


def install_uvloop() -> bool:
    """Make uvloop the default for later `asyncio.run`/`new_event_loop` calls.

    Returns False (and changes nothing) when uvloop is missing or disabled.
    Prefer `run()`, which does not touch global state.
    """
    if not _uvloop_wanted(None):
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """'uvloop' or 'asyncio', for the given or the running loop."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
