"""``Outbox``: the frames waiting for one connection's transport.

The first frame of an event-loop iteration is written at once: a lone
request or reply (a sequential caller's, a follower's answer to its leader)
loses no iteration before it leaves. The frames that follow in the same
iteration, and all frames while the owner ``hold``s it (a provider
dispatching a chunk of requests), are joined into one ``transport.write``
at the end of the iteration or at ``flush()``. The provider and the
channel both write through one.
"""

from __future__ import annotations

import asyncio

__all__ = ["Outbox"]


class Outbox:
    __slots__ = ("_frames", "_loop", "_scheduled", "held", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._frames: list[bytes] = []
        self._scheduled = False
        #: While True every frame waits for ``flush()``.
        self.held = False
        #: Set by the owner's ``connection_made``; frames for a missing or
        #: closing transport are dropped.
        self.transport: asyncio.Transport | None = None

    @property
    def pending(self) -> bool:
        return bool(self._frames)

    def send(self, frame: bytes) -> None:
        if self.held or self._scheduled:
            self._frames.append(frame)
            return
        self._write(frame)
        self._scheduled = True
        self._loop.call_soon(self._end_of_iteration)

    def flush(self) -> None:
        """Write what waits, now, as one write."""
        frames = self._frames
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        self._write(data)

    def clear(self) -> None:
        self._frames.clear()

    def _end_of_iteration(self) -> None:
        self._scheduled = False
        self.flush()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
