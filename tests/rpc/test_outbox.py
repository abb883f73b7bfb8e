"""``Outbox``: the first frame of a loop iteration goes out at once, the rest
of the iteration (and everything while held) in one write."""

from __future__ import annotations

import asyncio
from typing import cast

from rpc._outbox import Outbox


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


def outbox_with_transport() -> tuple[Outbox, RecordingTransport]:
    outbox = Outbox(asyncio.get_running_loop())
    transport = RecordingTransport()
    outbox.transport = cast(asyncio.Transport, transport)
    return outbox, transport


async def test_first_frame_at_once_the_rest_of_the_iteration_joined() -> None:
    outbox, transport = outbox_with_transport()
    outbox.send(b"a")
    assert transport.writes == [b"a"]  # no loop iteration lost
    outbox.send(b"b")
    outbox.send(b"c")
    assert transport.writes == [b"a"] and outbox.pending
    await asyncio.sleep(0)
    assert transport.writes == [b"a", b"bc"]
    outbox.send(b"d")  # a new iteration: at once again
    assert transport.writes == [b"a", b"bc", b"d"]


async def test_held_frames_wait_for_flush_and_closing_drops_them() -> None:
    outbox, transport = outbox_with_transport()
    outbox.held = True
    outbox.send(b"x")
    outbox.send(b"y")
    assert transport.writes == []
    outbox.flush()
    assert transport.writes == [b"xy"] and not outbox.pending
    outbox.held = False
    transport.closing = True
    outbox.send(b"lost")
    await asyncio.sleep(0)
    assert transport.writes == [b"xy"] and not outbox.pending
