"""A burst of pipelined requests is dispatched in slices of
``max_frames_per_step``, with the event loop's other work in between."""

from __future__ import annotations

import asyncio

import pytest

from rpc import RpcProvider
from tests.rpc.rpc_helpers import EchoReply, EchoRequest, RawPeer, request_frame, serving
from tests.rpc.rpc_test_echo_pb2 import EchoRequest as EchoRequestType


class Recorder:
    """Echo that logs each dispatch and, on the first, schedules a marker
    callback: it can only run between two slices of the burst."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def Echo(self, request: EchoRequestType) -> EchoReply:
        self.log.append(f"call {request.seq}")
        if request.seq == 0:
            asyncio.get_running_loop().call_soon(self.log.append, "other work")
        return EchoReply(seq=request.seq)

    async def Other(self, request: EchoRequestType) -> EchoReply:
        return EchoReply()


async def _burst(per_step: int, n: int) -> list[str]:
    impl = Recorder()
    async with serving(impl, max_frames_per_step=per_step) as provider:
        peer = await RawPeer.connect(provider.port)
        try:
            await peer.send(b"".join(
                request_frame(i + 1, EchoRequest(seq=i).SerializeToString()) for i in range(n)))
            seqs = [EchoReply.FromString((await peer.read_frame()).body).seq for _ in range(n)]
            assert seqs == list(range(n)), "every request answered, in order"
        finally:
            await peer.close()
    return impl.log


async def test_a_burst_is_dispatched_in_slices_with_other_work_between() -> None:
    log = await _burst(per_step=16, n=100)
    assert [e for e in log if e.startswith("call")] == [f"call {i}" for i in range(100)]
    # The marker scheduled during the first slice runs before the second
    # slice starts (at most 16 dispatches: fewer if TCP split the burst).
    assert 0 < log.index("other work") <= 16


def test_the_step_must_allow_one_frame() -> None:
    with pytest.raises(ValueError):
        RpcProvider(max_frames_per_step=0)
