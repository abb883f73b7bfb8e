"""RaftNode clusters over real loopback sockets with real files (fsync on)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from raft.core import NotLeader
from tests.raft.cluster import LocalCluster


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(bounded())


def agree(cluster: LocalCluster, ids: list[int] | None = None) -> list[bytes]:
    """All running (or the given) members applied the same sequence; return it."""
    members = [cluster.members[i] for i in ids] if ids else cluster.running()
    seqs = [m.fsm.applied for m in members]
    shortest = min(len(s) for s in seqs)
    for s in seqs:
        assert s[:shortest] == seqs[0][:shortest], "replicas applied different entries"
    return [d for _, d in max(seqs, key=len)]


def test_three_nodes_replicate_10000_proposals(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3)
        await cluster.start()
        try:
            leader = await cluster.wait_leader()
            node = cluster.node(leader)
            payloads = [f"p{i}".encode() for i in range(10_000)]
            # Many concurrent proposers: the node batches them into few fsyncs.
            results = await asyncio.gather(*(node.propose(p) for p in payloads))
            indexes = [index for index, _ in results]
            assert len(set(indexes)) == len(indexes)
            last = max(indexes)
            await cluster.wait_for(
                lambda: all(
                    m.node is not None and m.node.status().applied >= last
                    for m in cluster.running()
                ),
                what="every node to apply everything",
            )
            applied = agree(cluster)
            assert set(payloads) <= set(applied)
            assert [i for i, _ in cluster.members[leader].fsm.applied] == sorted(
                i for i, _ in cluster.members[leader].fsm.applied
            )
        finally:
            await cluster.stop()

    run(scenario)


def test_follower_then_leader_restart_from_disk(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3)
        await cluster.start()
        try:
            acked = [f"a{i}".encode() for i in range(50)]
            for p in acked:
                await cluster.propose(p)
            leader = await cluster.wait_leader()
            follower = next(i for i in cluster.ids if i != leader)
            await cluster.stop_member(follower)
            more = [f"b{i}".encode() for i in range(50)]
            for p in more:
                await cluster.propose(p)
            await cluster.restart_member(follower)
            # The restarted follower replays its own log from disk, then catches up.
            await cluster.wait_for(
                lambda: set(acked + more) <= set(cluster.members[follower].fsm.values),
                what="restarted follower to catch up",
            )
            await cluster.stop_member(leader)
            new_leader = await cluster.wait_leader()
            assert new_leader != leader
            last = [f"c{i}".encode() for i in range(20)]
            for p in last:
                await cluster.propose(p)
            await cluster.restart_member(leader)
            await cluster.wait_for(
                lambda: set(acked + more + last) <= set(cluster.members[leader].fsm.values),
                what="restarted old leader to catch up",
            )
            agree(cluster)
        finally:
            await cluster.stop()

    run(scenario)


def test_far_behind_follower_catches_up_by_snapshot(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3, max_raft_state=4096, snapshot_catchup_entries=10)
        await cluster.start()
        try:
            leader = await cluster.wait_leader()
            lagging = next(i for i in cluster.ids if i != leader)
            await cluster.stop_member(lagging)
            payloads = [f"s{i:04d}".encode() * 4 for i in range(600)]
            node = cluster.node(leader)
            await asyncio.gather(*(node.propose(p) for p in payloads))
            # The snapshot is written and the log compacted off the loop,
            # after the proposals are answered.
            await cluster.wait_for(lambda: cluster.node(leader).status().first_index > 1,
                                   what="leader to snapshot and compact its log")
            assert cluster.node(leader).status().snapshot_index > 0
            await cluster.restart_member(lagging)
            await cluster.wait_for(
                lambda: set(payloads) <= set(cluster.members[lagging].fsm.values),
                what="lagging follower to install the snapshot and catch up",
            )
            assert cluster.node(lagging).status().snapshot_index > 0
            agree(cluster)
        finally:
            await cluster.stop()

    run(scenario)


def test_read_index_reads_see_committed_writes(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3)
        await cluster.start()
        try:
            leader = await cluster.wait_leader()
            index = await cluster.propose(b"w1")
            read = await asyncio.wait_for(cluster.node(leader).read_index(), 5)
            assert read >= index
            assert b"w1" in cluster.members[leader].fsm.values
            follower = next(i for i in cluster.ids if i != leader)
            with pytest.raises(NotLeader):
                await cluster.node(follower).read_index()
            # Many concurrent reads share heartbeat rounds.
            reads = await asyncio.wait_for(
                asyncio.gather(*(cluster.node(leader).read_index() for _ in range(200))), 5
            )
            assert min(reads) >= index
        finally:
            await cluster.stop()

    run(scenario)


def test_isolated_leader_cannot_serve_reads(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3)
        await cluster.start()
        try:
            leader = await cluster.wait_leader()
            await cluster.propose(b"x")
            others = [i for i in cluster.ids if i != leader]
            for i in others:
                await cluster.stop_member(i)
            # No quorum can confirm leadership: the read must not be released.
            with pytest.raises((TimeoutError, NotLeader)):
                await asyncio.wait_for(cluster.node(leader).read_index(), 1.0)
        finally:
            await cluster.stop()

    run(scenario)


def test_five_nodes_tolerate_two_stopped(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 5)
        await cluster.start()
        try:
            await cluster.propose(b"before")
            leader = await cluster.wait_leader()
            down = [leader, (leader + 1) % 5]
            for i in down:
                await cluster.stop_member(i)
            payloads = [f"d{i}".encode() for i in range(100)]
            for p in payloads:
                await cluster.propose(p)
            up = [i for i in cluster.ids if i not in down]
            await cluster.wait_for(
                lambda: all(set(payloads) <= set(cluster.members[i].fsm.values) for i in up),
                what="the three live nodes to apply",
            )
            agree(cluster, up)
        finally:
            await cluster.stop()

    run(scenario)


def test_leadership_transfer(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3)
        await cluster.start()
        try:
            await cluster.propose(b"t")
            leader = await cluster.wait_leader()
            target = (leader + 1) % 3
            cluster.node(leader).transfer_leader(target)
            await cluster.wait_for(
                lambda: cluster.node(target).is_leader, what="the transfer target to lead"
            )
            await cluster.propose(b"after-transfer")
        finally:
            await cluster.stop()

    run(scenario)


def test_transfer_leadership_picks_the_best_follower_and_returns_the_new_leader(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3)
        await cluster.start()
        try:
            await cluster.propose(b"t")
            leader = await cluster.wait_leader()
            node = cluster.node(leader)
            term = node.status().term
            lagging = (leader + 1) % 3
            await cluster.stop_member(lagging)
            await cluster.propose(b"only the others have this")
            best = node.best_transfer_target()
            assert best == (leader + 2) % 3  # the stopped one lags behind
            assert await node.transfer_leadership() == best
            assert cluster.node(best).is_leader and cluster.node(best).status().term == term + 1
            assert not node.is_leader
            with pytest.raises(NotLeader) as info:
                await node.transfer_leadership(leader)
            assert info.value.leader == best
            # A target that cannot answer: refused fast, not after the timeout.
            new = cluster.node(best)
            with pytest.raises(TimeoutError):
                await new.transfer_leadership(lagging, timeout=5.0)
            assert new.is_leader
            with pytest.raises(ValueError):
                await new.transfer_leadership(7)
            assert await new.transfer_leadership(best) == best  # already leads
        finally:
            await cluster.stop()

    run(scenario)


def test_slow_follower_does_not_slow_commits(tmp_path: Path) -> None:
    """Every link into node 2 goes through a proxy; once a leader other than
    2 is chosen, its link to 2 gets 0.5 s of latency. Commits need only the
    other follower, so they stay fast (a blocking transport would make each
    one wait for the slow peer)."""
    from tests.nemesis.proxy import LinkProxy

    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3)
        await cluster.listen()
        proxies = {}
        for src in (0, 1):
            proxy = LinkProxy(("127.0.0.1", cluster.members[2].port))
            await proxy.start()
            proxies[src] = proxy
            cluster.routes[(src, 2)] = ("127.0.0.1", proxy.port)
        await cluster.start_nodes()
        try:
            await cluster.propose(b"warm")
            leader = await cluster.wait_leader()
            if leader == 2:
                cluster.node(2).transfer_leader(0)
                await cluster.wait_for(lambda: cluster.node(0).is_leader, what="transfer")
                leader = 0
            proxies[leader].set_delay(0.5)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(50):
                await cluster.node(leader).propose(b"s%d" % i)
            elapsed = loop.time() - start
            assert elapsed < 10, f"50 sequential commits took {elapsed:.1f} s"
            # The slow follower still gets everything, just later.
            await cluster.wait_for(lambda: b"s49" in cluster.members[2].fsm.values,
                                   timeout=30, what="slow follower to catch up")
        finally:
            await cluster.stop()
            for proxy in proxies.values():
                await proxy.close()

    run(scenario)


def test_data_dir_stays_bounded_by_max_raft_state(tmp_path: Path) -> None:
    """The contract: about --max-raft-state, plus one WAL segment, plus the
    latest snapshot. Small numbers so many segments and snapshots go by."""
    limit, segment = 8192, 16384

    def dir_bytes(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    async def scenario() -> None:
        cluster = LocalCluster(tmp_path, 3, max_raft_state=limit, snapshot_catchup_entries=20,
                               segment_bytes=segment)
        await cluster.start()
        try:
            leader = await cluster.wait_leader()
            node = cluster.node(leader)
            for batch in range(20):
                await asyncio.gather(*(node.propose(b"%04d" % batch + b"x" * 96)
                                       for _ in range(100)))
            last = node.status().commit
            await cluster.wait_for(
                lambda: all(m.node is not None and m.node.status().applied >= last
                            for m in cluster.running()), what="everyone to apply")
            for m in cluster.running():
                assert m.node is not None and m.node.metrics.snapshots_taken >= 5
                snapshot = len(m.fsm.snapshot())
                # Slack: one batch past the limit before the snapshot, one
                # segment being filled, the snapshot file, small headers.
                bound = 2 * limit + 2 * segment + snapshot + 4096
                # The last snapshot and compaction finish in the storage
                # worker, after the entries are applied.
                directory = m.directory
                await cluster.wait_for(lambda d=directory, b=bound: dir_bytes(d) <= b,
                                       what=f"node {m.id}'s data dir within {bound} bytes")
        finally:
            await cluster.stop()

    run(scenario)
