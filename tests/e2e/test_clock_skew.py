"""Nothing the state machine decides depends on one node's clock (issue 12).

Session expiry decides whether a retried write is a duplicate. It used to
follow the leader's wall clock: a leader whose clock jumped ten hours ahead
expired every session, and a client's retry of a write that had been applied
was applied again. Real ``kvserver`` processes here run with a wall clock we
jump forward or back (``skewed_clock/sitecustomize.py``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from clerk import AsyncClerk
from kvserver import kv_pb2
from kvserver.service import KV_SERVICE
from rpc import RpcChannel, Stub
from tests.e2e.harness import running_cluster, statuses, wait_leader

pytestmark = pytest.mark.timeout(120)

HOURS_10 = 10 * 3600.0


def append(seq: int) -> kv_pb2.PutAppendRequest:
    return kv_pb2.PutAppendRequest(key=b"log", value=b"x", op=kv_pb2.APPEND,
                                   client_id=4242, seq=seq, ack_seq=1)


async def send(address: tuple[str, int], request: kv_pb2.PutAppendRequest) -> int:
    async with RpcChannel(*address) as channel:
        reply = await Stub(channel, KV_SERVICE).PutAppend(request, timeout=10.0)
        return int(reply.err)


@pytest.mark.parametrize("skew", [HOURS_10, -HOURS_10])
def test_a_leader_whose_wall_clock_jumps_expires_no_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: float) -> None:
    clocks = tmp_path / "clocks"
    clocks.mkdir()
    here = Path(__file__).parent / "skewed_clock"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(here), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("PYRAFTKV_TEST_CLOCK_DIR", str(clocks))
    with running_cluster(tmp_path) as cluster:
        leader = wait_leader(cluster)
        address = cluster.addresses[leader]
        assert asyncio.run(send(address, append(1))) == kv_pb2.OK

        # The leader's wall clock jumps; more writes carry its stamps.
        (clocks / f"node{leader}").write_text(str(skew), encoding="ascii")

        async def more_writes() -> None:
            async with AsyncClerk(cluster.addresses, timeout=20.0) as ck:
                for i in range(20):
                    await ck.put(f"other{i}", "v")

        asyncio.run(more_writes())
        # The client retries seq 1 (its reply was "lost"): still a duplicate.
        assert asyncio.run(send(address, append(1))) == kv_pb2.OK

        async def read() -> bytes:
            async with AsyncClerk(cluster.addresses, timeout=20.0) as ck:
                return await ck.get("log")

        assert asyncio.run(read()) == b"x"
        assert wait_leader(cluster) == leader
        assert all(s is not None for s in statuses(cluster))
