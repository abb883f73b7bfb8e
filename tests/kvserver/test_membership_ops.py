"""Membership changes through the KV service and the clerk, on an
in-process cluster (real TCP, real files): a new empty node added as a
learner catches up by snapshot, is promoted only once caught up, members
are removed (a follower, then the leader, which hands over first), removed
nodes stop, and clerks find the cluster through removed or unknown nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from clerk import AsyncClerk, BadRequest, Member
from kvserver import kv_pb2
from kvserver.launcher import free_ports
from kvserver.server import KvNode
from tests.kvserver.inproc import (
    WAIT,
    cluster,
    leader_of,
    restart,
    start_empty_node,
    stub_for,
)


async def until(condition: object, what: str) -> None:
    """Poll ``condition()`` until it is true (fails after WAIT seconds)."""
    assert callable(condition)
    try:
        async with asyncio.timeout(WAIT):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def address(node: KvNode) -> tuple[str, int]:
    return node.address.host, node.address.port


def roles(members: list[Member]) -> dict[int, str]:
    return {m.id: m.role for m in members}


async def test_add_catch_up_by_snapshot_promote_remove(tmp_path: Path) -> None:
    # A small --max-raft-state: the log is compacted long before the new
    # node comes, so it can only catch up by snapshot.
    async with cluster(tmp_path, max_raft_state=4096, snapshot_catchup_entries=5) as nodes:
        ck = AsyncClerk([address(n) for n in nodes], timeout=WAIT)
        try:
            await asyncio.gather(*(ck.put(f"k{i}", f"v{i}" * 10) for i in range(300)))
            leader = await leader_of(nodes)
            await until(lambda: leader.node.status().first_index > 1, "a compaction")

            # Added while its port is still closed: it holds nothing, so a
            # promotion is refused, with the numbers.
            port = free_ports(1)[0]
            members = await ck.member_add(3, f"127.0.0.1:{port}")
            assert roles(members) == {0: "voter", 1: "voter", 2: "voter", 3: "learner"}
            with pytest.raises(BadRequest, match=r"learner 3 has 0 of \d+ entries; promote it "
                                                 r"once it has 90%"):
                await ck.member_promote(3)
            # The leader's transport learned the new member's address.
            assert leader.transport is not None
            assert leader.transport.peers[3] == ("127.0.0.1", port)

            new = await start_empty_node(nodes, tmp_path, port=port)
            await until(lambda: new.state_machine.get(b"k299") == b"v299" * 10,
                        "the learner to catch up")
            assert new.node.metrics.snapshots_installed >= 1
            assert not new.node.is_leader and 3 not in leader.node.membership.voters
            members = await ck.member_promote(3)
            assert roles(members)[3] == "voter"
            listed = {m.id: m for m in await ck.member_list()}
            assert listed[3].address == f"127.0.0.1:{port}" and listed[3].match_index > 0
            assert listed[leader.id].match_index >= listed[3].match_index

            # A follower: removed plainly; it learns its removal and stops.
            follower = next(n for n in nodes[:3] if n is not leader)
            members = await ck.member_remove(follower.id)
            assert follower.id not in roles(members)
            await until(follower.removed.is_set, "the removed follower to notice")
            assert follower.id not in leader.transport.peers
            # Restarted, it finds its removal in its own log and stops again.
            again = await restart(nodes, nodes.index(follower))
            await until(again.removed.is_set, "the restarted removed node to notice")

            # The leader: it hands over first; the new leader removes it.
            old_leader = await leader_of(nodes)
            members = await ck.member_remove(old_leader.id)
            assert old_leader.id not in roles(members)
            await until(old_leader.removed.is_set, "the removed leader to notice")
            assert not old_leader.node.is_leader
            await ck.put("after", "removal")
            assert await ck.get("after") == b"removal"
            live = [n for n in nodes if not n.removed.is_set()]
            assert {n.id for n in live} == {3, 3 - follower.id - old_leader.id}
        finally:
            await ck.close()


async def test_change_checks_and_refusals(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        follower = next(n for n in nodes if n is not leader)
        async with stub_for(leader) as stub:
            async def change(op: int, node: int, addr: str = "") -> kv_pb2.MemberChangeReply:
                reply: kv_pb2.MemberChangeReply = await stub.ChangeMembership(
                    kv_pb2.MemberChangeRequest(op=op, id=node, address=addr), timeout=WAIT)
                return reply

            for op, node, addr, text in [
                (kv_pb2.ADD_LEARNER, -1, "127.0.0.1:1", "negative"),
                (kv_pb2.ADD_LEARNER, 5, "127.0.0.1", "not HOST:PORT"),
                (kv_pb2.ADD_LEARNER, 5, "127.0.0.1:0", "not 1-65535"),
                (kv_pb2.ADD_LEARNER, 5, "127.0.0.1:70000", "not 1-65535"),
                (kv_pb2.ADD_LEARNER, 1, "127.0.0.1:9", "already a voter"),
                (kv_pb2.ADD_LEARNER, 5, str(follower.address), "is node"),
                (kv_pb2.PROMOTE, 1, "", "already a voter"),
                (kv_pb2.REMOVE, 9, "", "not a member"),
                (7, 1, "", "unknown membership change op"),
            ]:
                reply = await change(op, node, addr)
                assert reply.err == kv_pb2.BAD_REQUEST and text in reply.error, (op, node, reply)
            assert leader.node.membership.members == {0, 1, 2}  # nothing was proposed
        async with stub_for(follower) as stub:
            reply = await stub.ChangeMembership(
                kv_pb2.MemberChangeRequest(op=kv_pb2.REMOVE, id=leader.id), timeout=WAIT)
            assert reply.err == kv_pb2.WRONG_LEADER and reply.leader_hint == leader.id
        # Through a clerk that asks the follower first: the WRONG_LEADER
        # detour is not a try that may have done it, so no "done" guess.
        async with AsyncClerk([address(follower), address(leader)], timeout=WAIT) as ck:
            with pytest.raises(BadRequest, match="node 9 is not a member"):
                await ck.member_remove(9)
            with pytest.raises(BadRequest, match="node 1 is already a voter"):
                await ck.member_promote(1)


async def test_clerk_finds_the_cluster_through_removed_and_unknown_nodes(
        tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        port = free_ports(1)[0]
        async with AsyncClerk([address(n) for n in nodes], timeout=WAIT) as ck:
            await ck.member_add(3, f"127.0.0.1:{port}")
            new = await start_empty_node(nodes, tmp_path, port=port)
            await until(lambda: leader.node.member_progress()[3].match
                        >= leader.node.status().last_index, "the learner to catch up")
            await ck.member_promote(3)
            gone = next(n for n in nodes[:3] if n is not leader)
            await ck.member_remove(gone.id)
            await until(gone.removed.is_set, "the removed node to notice")
            await gone.stop()
            assert await leader.node.transfer_leadership(3) == 3
        # Knows only the removed node and a follower: the follower's hint
        # names node 3, which this clerk has no address for.
        other = next(n for n in nodes[:3] if n is not leader and n is not gone)
        async with AsyncClerk([address(gone), address(other)], timeout=WAIT) as ck:
            await ck.put("found", "yes")
            assert await ck.get("found") == b"yes"
            assert address(new) in ck.servers
            assert {m.id for m in await ck.member_list()} == {leader.id, other.id, 3}


async def test_a_change_the_leader_cannot_take_yet_is_retried(tmp_path: Path) -> None:
    async with cluster(tmp_path, request_timeout=0.1) as nodes:
        leader = await leader_of(nodes)
        followers = [i for i, n in enumerate(nodes) if n is not leader]
        for i in followers:
            await nodes[i].stop()
        async with AsyncClerk([address(leader)], timeout=WAIT) as ck:
            answers: list[str] = []
            call = ck._call

            async def watched(server: int, method: str, request: Any, timeout: float) -> Any:
                reply = await call(server, method, request, timeout)
                if method == "ChangeMembership":
                    answers.append(f"{kv_pb2.ErrorCode.Name(reply.err)} {reply.error}")
                return reply

            ck._call = watched  # type: ignore[method-assign]
            # Uncommitted (no majority): the first try times out, the next
            # are refused (one change at a time) and must be retried too.
            adding = asyncio.ensure_future(ck.member_add(3, "127.0.0.1:1"))
            await until(lambda: any("is not committed yet" in a for a in answers),
                        "a refused retry")
            assert answers[0].startswith("TIMEOUT") and not adding.done()
            assert 3 in leader.node.membership.learners  # in force, not committed
            await restart(nodes, followers[0])
            # The entry commits (with the next leader's first entry, maybe):
            # a retry then sees "already a learner" and checks the list.
            members = await adding
            assert answers[-1] == "BAD_REQUEST node 3 is already a learner", answers
        assert roles(members)[3] == "learner"
        assert (await leader_of(nodes)).node.membership.learners == {3}
