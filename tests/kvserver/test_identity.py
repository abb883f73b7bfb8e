"""Node identity: the IDENTITY file, the rules deciding what an empty data
dir may do from the members' Membership replies, the config checks, and the
replicated "seen" marks they rest on (in-process nodes for the leader's
marking)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from kvserver import kv_pb2
from kvserver.config import format_config, parse_config
from kvserver.discovery import WaitingService, ask_members, settle_identity
from kvserver.identity import (
    Identity,
    IdentityError,
    check_config,
    cluster_id_of,
    config_membership,
    decide_bootstrap,
    decide_join,
    has_data,
    read_identity,
    write_identity,
)
from kvserver.launcher import free_ports
from kvserver.service import KV_SERVICE
from kvserver.state_machine import KvStateMachine, encode_command
from raft.membership import Membership
from raft.types import Entry, EntryType, SnapshotMeta
from rpc import RpcProvider
from tests.kvserver.inproc import WAIT, cluster, leader_of, put, stub_for

CONF = parse_config(format_config([("127.0.0.1", 7000), ("127.0.0.1", 7001),
                                   ("127.0.0.1", 7002)]), "c.conf")
CLUSTER = cluster_id_of(config_membership(CONF))


def reply(*members: tuple[int, int, bool], cluster_id: str = CLUSTER, commit: int = 10,
          bootstrapping: bool = False) -> kv_pb2.MembershipReply:
    """A Membership reply listing (id, role, seen) members at 127.0.0.1:7000+id."""
    return kv_pb2.MembershipReply(
        err=kv_pb2.OK, cluster_id=cluster_id, commit_index=commit, bootstrapping=bootstrapping,
        members=[kv_pb2.Member(id=n, address=f"127.0.0.1:{7000 + n}",
                               role=role, seen=seen)  # type: ignore[arg-type]
                 for n, role, seen in members])


V, L = kv_pb2.VOTER, kv_pb2.LEARNER


def test_the_cluster_id_is_the_same_for_every_bootstrap_node_and_differs_per_cluster() -> None:
    other = parse_config(format_config([("127.0.0.1", 7000), ("127.0.0.1", 7001)]))
    assert len(CLUSTER) == 16 and int(CLUSTER, 16) >= 0
    assert cluster_id_of(config_membership(CONF)) == CLUSTER
    assert cluster_id_of(config_membership(other)) != CLUSTER
    # Behind proxies each node holds its own view of its peers' addresses.
    view = parse_config(format_config([("127.0.0.1", 9000), ("127.0.0.1", 7001),
                                       ("127.0.0.1", 9002)]))
    assert cluster_id_of(config_membership(view)) == CLUSTER


def test_identity_file_round_trip_and_damage(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    assert read_identity(d) is None and not has_data(d)
    ident = Identity(CLUSTER, 1, "127.0.0.1:7001", config_membership(CONF))
    write_identity(d, ident)
    assert read_identity(d) == ident
    assert not has_data(d)  # an identity alone is not data
    (tmp_path / "d" / "wal").mkdir()
    assert has_data(d)
    (tmp_path / "d" / "IDENTITY").write_bytes(b"{not json")
    with pytest.raises(IdentityError, match="not an identity file"):
        read_identity(d)


def test_bootstrap_waits_for_an_answer_and_goes_ahead_with_waiting_peers() -> None:
    assert decide_bootstrap(1, CONF, []) is None
    ident = decide_bootstrap(1, CONF, [reply(bootstrapping=True, cluster_id="")])
    assert ident == Identity(CLUSTER, 1, "127.0.0.1:7001", config_membership(CONF))
    alone = parse_config(format_config([("127.0.0.1", 7000)]))
    assert decide_bootstrap(0, alone, []) is not None


def test_a_late_voter_never_seen_bootstraps() -> None:
    running = reply((0, V, True), (1, V, False), (2, V, True))
    assert decide_bootstrap(1, CONF, [running]) is not None


def test_a_wiped_member_is_refused_with_the_replace_commands() -> None:
    stale = reply((0, V, True), (1, V, False), (2, V, True), commit=3)
    fresh = reply((0, V, True), (1, V, True), (2, V, True), commit=9)
    with pytest.raises(IdentityError) as err:
        decide_bootstrap(1, CONF, [stale, fresh])
    text = str(err.value)
    assert "node 1's data dir is empty" in text and CLUSTER in text
    assert "callerMain -f c.conf member remove 1;" in text
    assert "kvserver --id NEW_ID --addr HOST:PORT --join -f c.conf" in text
    assert "\n" not in text


def test_a_removed_or_added_member_needs_join() -> None:
    with pytest.raises(IdentityError, match="not a member of cluster"):
        decide_bootstrap(1, CONF, [reply((0, V, True), (2, V, True))])
    with pytest.raises(IdentityError, match="--join"):
        decide_bootstrap(1, CONF, [reply((0, V, True), (1, L, False), (2, V, True))])


def test_join_only_as_the_unseen_learner_at_its_address() -> None:
    assert decide_join(3, "127.0.0.1:7003", "c.conf", [reply(bootstrapping=True)]) is None
    added = reply((0, V, True), (1, V, True), (3, L, False))
    ident = decide_join(3, "127.0.0.1:7003", "c.conf", [added])
    assert ident == Identity(CLUSTER, 3, "127.0.0.1:7003", Membership())
    assert ident.joined
    with pytest.raises(IdentityError, match=re.escape(
            "first run: callerMain -f c.conf member add 4 127.0.0.1:7004")):
        decide_join(4, "127.0.0.1:7004", "c.conf", [added])
    with pytest.raises(IdentityError, match=re.escape("--addr 127.0.0.1:7003")):
        decide_join(3, "127.0.0.1:9999", "c.conf", [added])
    with pytest.raises(IdentityError, match="is a voter"):
        decide_join(1, "127.0.0.1:7001", "c.conf",
                    [reply((0, V, True), (1, V, False), (3, L, False))])
    with pytest.raises(IdentityError, match="has held data"):
        decide_join(3, "127.0.0.1:7003", "c.conf",
                    [reply((0, V, True), (1, V, True), (3, L, True))])


def test_check_config_refusals() -> None:
    boot = config_membership(CONF)
    ident = Identity(CLUSTER, 1, "127.0.0.1:7001", boot)
    check_config(ident, 1, CONF, boot, "d")  # the bootstrap list
    grown = Membership.of([0, 1, 2], [3], {**boot.address_map(), 3: "127.0.0.1:7003"})
    grown_conf = parse_config(format_config([("127.0.0.1", 7000 + i) for i in range(4)]),
                              "g.conf")
    check_config(ident, 1, grown_conf, grown, "d")  # the held membership
    same_ids = parse_config(format_config([("127.0.0.1", 8000 + i) for i in range(3)]))
    with pytest.raises(IdentityError, match="holds members"):
        check_config(ident, 1, same_ids, boot, "d")  # another cluster, same ids
    with pytest.raises(IdentityError, match=r"belongs to node 1 of cluster \w+, not to node 2"):
        check_config(ident, 2, CONF, boot, "d")
    with pytest.raises(IdentityError, match=r"g.conf lists members 0=127.0.0.1:7000, .*"
                                            r"holds members 0=127.0.0.1:7000"):
        check_config(ident, 1, grown_conf, boot, "d")
    # A joined node: any config naming one member it holds is a contact list.
    joined = Identity(CLUSTER, 3, "127.0.0.1:7003", Membership())
    check_config(joined, 3, CONF, grown, "d")
    foreign = parse_config(format_config([("127.0.0.1", 8000)]))
    with pytest.raises(IdentityError):
        check_config(joined, 3, foreign, grown, "d")


def _seen(index: int, *ids: int) -> Entry:
    data = encode_command(kv_pb2.Command(op=kv_pb2.MEMBER_SEEN, member_ids=ids))
    return Entry(index=index, term=1, data=data)


def test_seen_marks_apply_survive_snapshots_and_drop_with_removal() -> None:
    sm = KvStateMachine()
    sm.apply([_seen(1, 0, 1)])
    assert sm.seen_members == {0, 1}
    copy = KvStateMachine()
    copy.restore(sm.snapshot(), SnapshotMeta(index=1, term=1))
    assert copy.seen_members == {0, 1}
    removed = Membership.of([0, 2])
    sm.apply([Entry(index=2, term=1, type=EntryType.CONF_CHANGE, data=removed.encode()),
              _seen(3, 1, 2)])  # 1 was removed before this mark applied
    assert sm.seen_members == {0, 2}


def test_seen_marks_are_kept_in_the_store(tmp_path: Path) -> None:
    from kvserver.lmdb_store import LmdbKvStore
    store = LmdbKvStore(str(tmp_path / "kv"))
    KvStateMachine(store).apply([_seen(1, 2)])
    store.close()
    store = LmdbKvStore(str(tmp_path / "kv"))
    try:
        assert KvStateMachine(store).seen_members == {2}
    finally:
        store.close()


async def test_the_leader_marks_every_acknowledging_member_seen(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        leader = await leader_of(nodes)
        async with stub_for(leader) as stub:
            assert (await stub.PutAppend(put("k", "v", 1), timeout=WAIT)).err == kv_pb2.OK
            async with asyncio.timeout(WAIT):
                # Every node applies the marks: any member can answer.
                while any(n.state_machine.seen_members != {0, 1, 2} for n in nodes):
                    await asyncio.sleep(0.02)
            replies = await ask_members([nodes[2].address])
        assert [m.seen for m in replies[0].members] == [True, True, True]


async def test_an_empty_node_waits_for_a_peer_and_bootstraps_with_a_waiting_one() -> None:
    ports = free_ports(2)
    conf = parse_config(format_config([("127.0.0.1", p) for p in ports]))
    # Nobody answers: a wiped node must not bootstrap alone.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(settle_identity(1, conf.node(1), conf, join=False), 0.5)
    peer = RpcProvider("127.0.0.1", ports[0])
    peer.register(KV_SERVICE, WaitingService(0, conf))
    await peer.start()
    try:
        ident = await settle_identity(1, conf.node(1), conf, join=False)
        # --join never bootstraps: peers that wait are no cluster to join.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(settle_identity(2, conf.node(1), conf, join=True), 0.5)
    finally:
        await peer.close()
    assert ident.node_id == 1
    assert ident.cluster_id == cluster_id_of(config_membership(conf))
