"""An in-process cluster of three ``KvNode``s (real TCP on 127.0.0.1, real
files with fsync) and raw-request helpers, shared by the KV service tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvserver import kv_pb2
from kvserver.config import format_config, parse_config
from kvserver.launcher import free_ports
from kvserver.limits import Limits
from kvserver.server import KvNode, KvNodeOptions
from kvserver.service import KV_SERVICE
from raft.membership import Membership
from rpc import RpcChannel, Stub

#: Seconds any one wait of these tests may take.
WAIT = 20.0


@asynccontextmanager
async def cluster(tmp_path: Path, request_timeout: float = 2.0,
                  limits: Limits | None = None, size: int = 3,
                  **options: Any) -> AsyncIterator[list[KvNode]]:
    """``size`` nodes, data dirs ``tmp_path/n<i>``; ``options`` are more
    ``KvNodeOptions`` fields. A test may replace ``nodes[i]`` (``restart``):
    whatever the list holds at the end is stopped."""
    config = parse_config(format_config([("127.0.0.1", p) for p in free_ports(size)]))
    nodes = [KvNode(config, i, KvNodeOptions(tmp_path / f"n{i}", request_timeout=request_timeout,
                                             limits=limits or Limits(), **options))
             for i in range(size)]
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def start_empty_node(nodes: list[KvNode], tmp_path: Path, port: int | None = None,
                           **options: Any) -> KvNode:
    """Start a new node with an empty data dir (``tmp_path/n<id>``) and an
    empty bootstrap membership (``KvNodeOptions.membership``): it waits
    for the leader to add it. Its id is one above the config's, its port
    ``port`` (default: a free one); appended to ``nodes`` (so ``cluster``
    stops it). ``options`` override the first node's options."""
    old = nodes[0].config
    new_id = len(old)
    port = port if port is not None else free_ports(1)[0]
    config = parse_config(format_config([*old.addresses, ("127.0.0.1", port)]))
    node = KvNode(config, new_id, replace(nodes[0].options, data_dir=tmp_path / f"n{new_id}",
                                          membership=Membership(), **options))
    nodes.append(node)
    await node.start()
    return node


async def restart(nodes: list[KvNode], i: int) -> KvNode:
    """Stop ``nodes[i]`` (if it runs) and start a new node on its data dir."""
    old = nodes[i]
    await old.stop()
    nodes[i] = KvNode(old.config, old.id, old.options)
    await nodes[i].start()
    return nodes[i]


async def leader_of(nodes: list[KvNode]) -> KvNode:
    async with asyncio.timeout(WAIT):
        while True:
            for node in nodes:
                if node.node.is_leader:
                    return node
            await asyncio.sleep(0.01)


@asynccontextmanager
async def stub_for(node: KvNode) -> AsyncIterator[Any]:
    channel = RpcChannel(node.address.host, node.address.port)
    try:
        yield Stub(channel, KV_SERVICE)
    finally:
        await channel.close()


def put(key: str | bytes, value: str | bytes, seq: int, *, client_id: int = 7,
        op: int = kv_pb2.PUT) -> kv_pb2.PutAppendRequest:
    """A raw write request; text is sent as UTF-8."""
    return kv_pb2.PutAppendRequest(key=_b(key), value=_b(value), op=op,  # type: ignore[arg-type]
                                   client_id=client_id, seq=seq, ack_seq=1)


def _b(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data
