"""A Raft cluster in one process over real 127.0.0.1 sockets and real files.

Each member is a ``RaftNode`` with a ``FileStorage`` in its own directory, an
``RpcProvider`` serving ``raftRpc`` and an ``RpcTransport`` to the others;
the state machine records what it applies. Members can be stopped and
restarted from their directories on the same port.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raft.file_storage import FileStorage
from raft.membership import Membership
from raft.node import NodeConfig, RaftNode
from raft.transport import RAFT_SERVICE, RaftService, RpcTransport
from raft.types import Entry, EntryType, Role, SnapshotMeta
from rpc import RpcProvider


class RecordingStateMachine:
    """Applies by recording (index, data) of NORMAL entries, and returns the
    index; snapshot = the whole record."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, bytes]] = []
        self.applied_index = 0
        self.applied_term = 0
        self.applied_membership: Membership | None = None

    def apply(self, entries: Sequence[Entry]) -> list[int | None]:
        results: list[int | None] = []
        for entry in entries:
            if entry.index <= self.applied_index:
                results.append(None)
                continue
            self.applied_index, self.applied_term = entry.index, entry.term
            if entry.type is EntryType.NORMAL:
                self.applied.append((entry.index, entry.data))
                results.append(entry.index)
            else:
                if entry.type is EntryType.CONF_CHANGE:
                    self.applied_membership = Membership.decode(entry.data)
                results.append(None)
        return results

    def sync(self) -> None:
        pass

    def snapshot(self) -> bytes:
        out = bytearray()
        for index, data in self.applied:
            out += struct.pack(">QI", index, len(data)) + data
        return bytes(out)

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        self.applied_index, self.applied_term = meta.index, meta.term
        self.applied_membership = meta.membership
        self.applied = []
        pos = 0
        while pos < len(data):
            index, n = struct.unpack_from(">QI", data, pos)
            pos += 12
            self.applied.append((index, data[pos : pos + n]))
            pos += n

    @property
    def values(self) -> list[bytes]:
        return [d for _, d in self.applied]


class Member:
    def __init__(self, node_id: int, directory: Path) -> None:
        self.id = node_id
        self.directory = directory
        self.port = 0
        self.node: RaftNode | None = None
        self.provider: RpcProvider | None = None
        self.fsm = RecordingStateMachine()

    @property
    def running(self) -> bool:
        return self.node is not None


class LocalCluster:
    def __init__(self, tmp: Path, n: int, *, fsync: bool = True,
                 segment_bytes: int | None = None, **node_options: Any) -> None:
        self.ids = list(range(n))
        self.storage_options: dict[str, Any] = {"fsync": fsync}
        if segment_bytes is not None:
            self.storage_options["segment_bytes"] = segment_bytes
        self.members = {i: Member(i, tmp / f"node{i}") for i in self.ids}
        self.options: dict[str, Any] = {"tick_interval": 0.01, "election_tick": 10}
        self.options.update(node_options)
        #: (from, to) -> address node ``from`` dials for ``to`` (e.g. a proxy);
        #: set before start().
        self.routes: dict[tuple[int, int], tuple[str, int]] = {}

    async def start(self) -> None:
        await self.listen()
        await self.start_nodes()

    async def listen(self) -> None:
        """Bind every provider first so each transport knows every port."""
        for m in self.members.values():
            await self._listen(m)

    async def start_nodes(self) -> None:
        for m in self.members.values():
            await self._start_node(m)

    async def _listen(self, m: Member) -> None:
        m.fsm = RecordingStateMachine()
        storage = FileStorage(m.directory, **self.storage_options)
        m.node = RaftNode(
            NodeConfig(id=m.id, peers=frozenset(self.ids), seed=m.id, **self.options),
            storage,
            m.fsm,
        )
        m.provider = RpcProvider("127.0.0.1", m.port)
        m.provider.register(RAFT_SERVICE, RaftService(m.id, m.node.handle_request))
        await m.provider.start()
        m.port = m.provider.port

    async def _start_node(self, m: Member) -> None:
        assert m.node is not None
        transport = RpcTransport(
            m.id,
            {o.id: self.routes.get((m.id, o.id), ("127.0.0.1", o.port))
             for o in self.members.values()},
            deliver=m.node.step,
            unreachable=m.node.report_unreachable,
            timeout=1.0,
        )
        m.node.set_transport(transport)
        await m.node.start()

    async def stop_member(self, i: int) -> None:
        m = self.members[i]
        if m.provider is not None:
            await m.provider.close()
            m.provider = None
        if m.node is not None:
            await m.node.stop()
            m.node = None

    async def restart_member(self, i: int) -> None:
        m = self.members[i]
        assert m.node is None, "stop it first"
        await self._listen(m)
        await self._start_node(m)

    async def stop(self) -> None:
        for i in self.ids:
            await self.stop_member(i)

    def node(self, i: int) -> RaftNode:
        node = self.members[i].node
        assert node is not None, f"node {i} is not running"
        return node

    def running(self) -> list[Member]:
        return [m for m in self.members.values() if m.running]

    async def wait_for(
        self, condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        """Poll ``condition`` (cheap, in-process) until true or fail."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.005)

    async def wait_leader(self, timeout: float = 10.0) -> int:
        def one_leader() -> bool:
            leaders = [m for m in self.running() if m.node and m.node.status().role is Role.LEADER]
            return len(leaders) == 1

        await self.wait_for(one_leader, timeout, "a single leader")
        (leader,) = [m.id for m in self.running() if m.node and m.node.status().role is Role.LEADER]
        return leader

    async def propose(self, data: bytes, timeout: float = 10.0) -> int:
        """Propose through whoever leads, retrying across elections."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            leader = await self.wait_leader(max(0.1, deadline - loop.time()))
            try:
                index, _ = await asyncio.wait_for(
                    self.node(leader).propose(data), max(0.1, deadline - loop.time())
                )
                return index
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)
