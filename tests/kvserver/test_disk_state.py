"""The KV state on disk (LMDB) with real nodes in one process: snapshot
files streamed to a follower that fell behind the compacted log, the
store's quota, a store damaged by a power loss restored from its snapshot
file and the log, and a data dir of the release that kept the state in
memory, converted on first start."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from clerk import AsyncClerk, NoSpace
from kvserver import kv_pb2
from kvserver.config import format_config, parse_config
from kvserver.launcher import free_ports
from kvserver.server import KvNode, KvNodeOptions
from kvserver.state_machine import KvStateMachine, encode_command
from raft.file_storage import FileStorage
from raft.membership import Membership
from raft.types import Entry, HardState
from tests.kvserver.inproc import WAIT, cluster, leader_of, restart


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def servers(nodes: list[KvNode]) -> list[tuple[str, int]]:
    return [(n.address.host, n.address.port) for n in nodes]


async def until(cond: object, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def snap_files(node: KvNode) -> list[str]:
    return sorted(n for n in os.listdir(node.state_machine.snapshot_dir) if n.endswith(".snap"))


def test_a_follower_behind_the_compacted_log_gets_the_store_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, max_raft_state=32 << 10,
                           snapshot_catchup_entries=10) as nodes:
            leader = await leader_of(nodes)
            lagging = next(n for n in nodes if n is not leader).id
            await nodes[lagging].stop()
            ck = AsyncClerk(servers(nodes), timeout=WAIT)
            try:
                keys = [b"k\x00\xff%04d" % i for i in range(600)]
                await asyncio.gather(*(ck.put(k, k[::-1] * 8) for k in keys))
                leader = await leader_of([n for n in nodes if n.id != lagging])
                await until(lambda: leader.node.status().first_index > 50, "compaction")
                assert snap_files(leader), "the leader wrote no snapshot file"
                node = await restart(nodes, lagging)
                await until(lambda: all(node.state_machine.get(k) == k[::-1] * 8
                                        for k in keys), "the follower to catch up")
                assert node.node.metrics.snapshots_installed >= 1
                assert snap_files(node), "the received file is not kept"
                # The follower serves after the leader hands over.
                await ck.put(b"after", b"1")
                await until(lambda: node.state_machine.get(b"after") == b"1", "replication")
            finally:
                await ck.close()

    run(scenario())


def test_writes_past_the_quota_are_refused_reads_and_deletes_work(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, max_db_bytes=200 << 10) as nodes:
            ck = AsyncClerk(servers(nodes), timeout=WAIT)
            try:
                written = []
                with pytest.raises(NoSpace, match="max_db_bytes"):
                    for i in range(10_000):
                        await ck.put(b"key%05d" % i, b"v" * 1000)
                        written.append(b"key%05d" % i)
                assert len(written) > 50
                # Refused on arrival: nothing was applied, reads work.
                assert await ck.get(written[0]) == b"v" * 1000
                assert await ck.get(b"key%05d" % len(written)) == b""
                await ck.delete(written[0])
                assert await ck.get(written[0]) == b""
                with pytest.raises(NoSpace):
                    await ck.append(written[1], b"more")
                assert all(n.node.failure is None for n in nodes)
            finally:
                await ck.close()

    run(scenario())


def test_a_store_damaged_by_a_power_loss_is_rebuilt_from_its_snapshot_and_log(
    tmp_path: Path,
) -> None:
    keys = [b"d%04d" % i for i in range(1000)]

    async def write() -> None:
        async with cluster(tmp_path, max_raft_state=16 << 10, snapshot_catchup_entries=5,
                           size=1) as nodes:
            ck = AsyncClerk(servers(nodes), timeout=WAIT)
            try:
                for k in keys:
                    await ck.put(k, k)
                await until(lambda: nodes[0].node.metrics.snapshots_taken >= 2, "compactions")
                # Only the newest snapshot file is kept.
                await until(lambda: len(snap_files(nodes[0])) == 1, "one snapshot file")
            finally:
                await ck.close()

    async def check() -> None:
        async with cluster(tmp_path, max_raft_state=16 << 10, size=1) as nodes:
            sm = nodes[0].state_machine
            # Restored from the snapshot file at once, the rest replayed.
            assert sm.applied_index > 0 and sm.get(keys[0]) == keys[0]
            await until(lambda: all(sm.get(k) == k for k in keys), "the log replayed")
            assert sm.applied_index >= len(keys)

    run(write())
    # As if the machine lost power with commits unsynced: the store's
    # marker is from another boot, so the store may be corrupt.
    kv = tmp_path / "n0" / "kv"
    (kv / "kv.unsynced").write_text("another-boot-id")
    (kv / "kv.mdb").write_bytes(b"\x00" * 8192)  # and it is
    run(check())


def test_a_data_dir_of_the_in_memory_release_is_converted(tmp_path: Path) -> None:
    """That release kept the state in memory and its snapshot as a
    KvSnapshot in the Raft snapshot file; the first start loads it into the
    store and replays the log after it."""
    port = free_ports(1)[0]
    config = parse_config(format_config([("127.0.0.1", port)]))
    directory = tmp_path / "n0"
    old = KvStateMachine()

    def command(key: bytes, value: bytes, seq: int) -> bytes:
        return encode_command(kv_pb2.Command(op=kv_pb2.PUT, key=key, value=value,
                                             client_id=5, seq=seq, ack_seq=1))

    entries = [Entry(index=i, term=1, data=command(b"k%d" % i, b"v%d" % i, i))
               for i in range(1, 11)]
    storage = FileStorage(directory)
    storage.save(HardState(term=1, vote=0, commit=10), entries)
    old.apply(entries[:6])
    storage.create_snapshot(6, old.snapshot(), Membership.of({0}))
    storage.close()

    async def scenario() -> None:
        node = KvNode(config, 0, KvNodeOptions(directory))
        await node.start()
        try:
            await until(lambda: node.state_machine.applied_index >= 10, "replay")
            for i in range(1, 11):
                assert node.state_machine.get(b"k%d" % i) == b"v%d" % i
            # The session came along: a retried write is still a duplicate.
            dup = node.state_machine.apply_command(11, command(b"k1", b"again", 1))
            assert dup.name == "DUPLICATE"
        finally:
            await node.stop()

    run(scenario())


def test_a_store_ahead_of_its_log_after_a_crash_gets_a_snapshot_file(tmp_path: Path) -> None:
    """Committed entries are applied before this node's write of them is
    durable; after a crash the store may hold entries the log lost. The log
    restarts after them, and the snapshot that says so has its file."""
    import logging

    from kvserver.lmdb_store import LmdbKvStore
    from kvserver.state_machine import DiskKvStateMachine
    from raft.snapshot_stream import snapshot_path
    from raft.snapshotter import recover_state_machine

    def command(i: int) -> bytes:
        return encode_command(kv_pb2.Command(op=kv_pb2.PUT, key=b"k%d" % i, value=b"v",
                                             client_id=5, seq=i, ack_seq=1))

    entries = [Entry(index=i, term=2, data=command(i)) for i in range(1, 6)]
    storage = FileStorage(tmp_path / "log")
    storage.save(HardState(term=2, vote=0, commit=2), entries[:3])  # the log lost 4 and 5
    store = LmdbKvStore(str(tmp_path / "kv"))
    sm = DiskKvStateMachine(store, str(tmp_path / "kv-snap"))
    sm.apply(entries)
    log = logging.LoggerAdapter(logging.getLogger("test"), {"node_id": 0})
    try:
        assert recover_state_machine(storage, sm, Membership.of({0}), log) == 5
        meta = storage.snapshot().meta
        assert (meta.index, meta.term, storage.last_index()) == (5, 2, 5)
        assert os.path.exists(snapshot_path(sm.snapshot_dir, meta))
    finally:
        storage.close()
        store.close()


def test_the_full_garbage_collection_runs_after_a_compaction(tmp_path: Path) -> None:
    """kvserver leaves the oldest generation to the node, which collects it
    right after a compaction (when the Raft log is smallest)."""
    import gc

    from kvserver.server import collect_old_objects_only_when_told

    saved = gc.get_threshold()
    collect_old_objects_only_when_told()
    try:
        assert gc.get_threshold()[2] >= 1 << 30
        before = gc.get_stats()[2]["collections"]

        async def scenario() -> None:
            async with cluster(tmp_path, max_raft_state=8 << 10, snapshot_catchup_entries=5,
                               size=1) as nodes:
                ck = AsyncClerk(servers(nodes), timeout=WAIT)
                try:
                    for i in range(200):
                        await ck.put(b"g%d" % i, b"x" * 100)
                    await until(lambda: nodes[0].node.metrics.snapshots_taken >= 2,
                                "compactions")
                    await until(lambda: gc.get_stats()[2]["collections"] >= before + 2,
                                "full collections")
                finally:
                    await ck.close()

        run(scenario())
    finally:
        gc.set_threshold(*saved)
