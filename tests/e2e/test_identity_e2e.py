"""Node identity with real processes (issue 15): a wiped member refuses with
the commands that replace it, other foreign starts are refused in one line
(exit 2), a node started late into a new cluster is let in, and a wiped
member is replaced end to end (remove, add, ``--join``, catch up by
snapshot, promote) while the cluster serves."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clerk import Clerk
from kvserver import kv_pb2
from kvserver.config import NodeAddress, format_config
from kvserver.discovery import ask_members
from kvserver.launcher import Cluster, free_ports
from rpc import RpcChannel, Stub
from tests.e2e.harness import KV_SERVICE, node_status, poll_until, run_cli, wait_leader

pytestmark = pytest.mark.timeout(120)

#: Small, so that the joiner is sent a snapshot rather than the log.
MAX_RAFT_STATE = "20000"


def _kvserver(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-m", "kvserver.main", *args, timeout=30)


def _one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kvserver: error: "), result.stderr
    return last


def _members(cluster: Cluster, ids: range | list[int]) -> list[kv_pb2.MembershipReply]:
    addrs = [NodeAddress(i, *cluster.addresses[i]) for i in ids]
    return asyncio.run(ask_members(addrs))


def _all_seen(cluster: Cluster, ids: list[int]) -> bool:
    replies = _members(cluster, ids)
    return len(replies) == len(ids) and all(
        {m.id for m in r.members if m.seen} >= set(ids) for r in replies)


def _change(cluster: Cluster, op: int, node: int, address: str = "") -> kv_pb2.MemberChangeReply:
    """One ChangeMembership, retried on the leader until it is OK."""
    async def once(leader: int) -> kv_pb2.MemberChangeReply:
        async with RpcChannel(*cluster.addresses[leader]) as channel:
            reply: kv_pb2.MemberChangeReply = await Stub(channel, KV_SERVICE).ChangeMembership(
                kv_pb2.MemberChangeRequest(op=op, id=node, address=address),  # type: ignore[arg-type]
                timeout=5.0)
            return reply

    result: list[kv_pb2.MemberChangeReply] = []

    def done() -> bool:
        result[:] = [asyncio.run(once(wait_leader(cluster, exclude=list(_gone))))]
        return result[0].err == kv_pb2.OK

    poll_until(done, 20.0, f"membership change {op} {node}")
    return result[0]


_gone: set[int] = set()


def _wiped_follower(tmp_path: Path, fill: int) -> tuple[Cluster, int]:
    """A 3-node cluster with ``fill`` keys, all members seen, one follower
    killed and its data dir gone (the caller stops the cluster)."""
    cluster = Cluster(tmp_path / "c.conf", 3, tmp_path / "data",
                      ["--max-raft-state", MAX_RAFT_STATE])
    cluster.start()
    _gone.clear()
    leader = wait_leader(cluster)
    with Clerk.from_config(cluster.config_path, timeout=20.0) as ck:
        for i in range(fill):
            ck.put(f"k{i:03d}", "v" * 100)
    poll_until(lambda: _all_seen(cluster, [0, 1, 2]), 20.0, "seen marks")
    victim = (leader + 1) % 3
    cluster.kill(victim)
    _gone.add(victim)
    return cluster, victim


def test_foreign_or_wiped_data_dirs_are_refused_in_one_line(tmp_path: Path) -> None:
    cluster, victim = _wiped_follower(tmp_path, 10)
    try:
        data = tmp_path / "data" / f"node{victim}"
        conf = str(cluster.config_path)

        wrong = _one_line_refusal(_kvserver("--id", str((victim + 1) % 3), "-f", conf,
                                            "--data-dir", str(data), "--addr",
                                            f"127.0.0.1:{free_ports(1)[0]}"))
        assert f"belongs to node {victim} of cluster" in wrong
        other = tmp_path / "other.conf"
        other.write_text(format_config([("127.0.0.1", p) for p in free_ports(3)]))
        foreign = _one_line_refusal(_kvserver("--id", str(victim), "-f", str(other),
                                              "--data-dir", str(data)))
        assert f"{other} lists members 0=127.0.0.1:" in foreign
        assert f"holds members 0={cluster.addresses[0][0]}:{cluster.addresses[0][1]}" in foreign

        shutil.rmtree(data)  # the disk is replaced
        wiped = _one_line_refusal(_kvserver("--id", str(victim), "-f", conf,
                                            "--data-dir", str(data)))
        assert f"node {victim}'s data dir is empty, but node {victim} is already a member" in wiped
        assert f"callerMain -f {conf} member remove {victim}; " in wiped
        assert f"kvserver --id NEW_ID --addr HOST:PORT --join -f {conf}" in wiped
        assert not (data / "wal").exists()  # it wrote nothing

        new_port = free_ports(1)[0]
        new_dir = tmp_path / "data" / "node3"
        stranger = _one_line_refusal(_kvserver("--id", "3", "--addr", f"127.0.0.1:{new_port}",
                                               "--join", "-f", conf, "--data-dir",
                                               str(new_dir)))
        assert f"first run: callerMain -f {conf} member add 3 127.0.0.1:{new_port}" in stranger
    finally:
        cluster.stop()


def test_a_wiped_member_is_replaced_by_a_new_node_that_joins(tmp_path: Path) -> None:
    cluster, victim = _wiped_follower(tmp_path, 300)  # past --max-raft-state: compacted
    try:
        conf = str(cluster.config_path)
        new_port = free_ports(1)[0]
        new_dir = tmp_path / "data" / "node3"
        # The replacement: remove the old member, add a new one, join, promote.
        _change(cluster, kv_pb2.REMOVE, victim)
        _change(cluster, kv_pb2.ADD_LEARNER, 3, f"127.0.0.1:{new_port}")
        log = open(tmp_path / "node3.log", "wb")  # noqa: SIM115 - closed below
        joiner = subprocess.Popen(
            [sys.executable, "-m", "kvserver.main", "--id", "3", "--addr",
             f"127.0.0.1:{new_port}", "--join", "-f", conf, "--data-dir", str(new_dir),
             "--max-raft-state", MAX_RAFT_STATE],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            with Clerk.from_config(cluster.config_path, timeout=20.0) as ck:
                ck.put("during", "join")

                def caught_up() -> bool:
                    assert joiner.poll() is None, (tmp_path / "node3.log").read_text()
                    st = asyncio.run(node_status("127.0.0.1", new_port))
                    return st is not None and st.snapshot_index > 0 and st.keys >= 301

                poll_until(caught_up, 30.0, "the joiner to catch up by snapshot")
                promoted = _change(cluster, kv_pb2.PROMOTE, 3)
                roles = {m.id: m.role for m in promoted.members}
                assert roles == {n: kv_pb2.VOTER for n in {0, 1, 2, 3} - {victim}}
                ck.put("after", "promote")
                assert ck.get("k000") == b"v" * 100 and ck.get("during") == b"join"
        finally:
            joiner.terminate()
            joiner.wait(timeout=20)
            log.close()
    finally:
        cluster.stop()


def test_a_node_started_late_into_a_new_cluster_bootstraps(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c.conf", 3, tmp_path / "data")
    cluster.write_config()
    try:
        cluster.start_node(0)
        cluster.start_node(1)
        wait_leader(cluster)
        with Clerk([cluster.addresses[0], cluster.addresses[1]], timeout=20.0) as ck:
            ck.put("early", "1")
        poll_until(lambda: _all_seen(cluster, [0, 1]), 20.0, "seen marks of 0 and 1")
        late = cluster.start_node(2)

        def applied() -> bool:
            assert late.poll() is None, cluster.log_path(2).read_text()
            st = asyncio.run(node_status(*cluster.addresses[2]))
            return st is not None and st.keys == 1 and st.role == "follower"

        poll_until(applied, 20.0, "the late node to follow")
        poll_until(lambda: _all_seen(cluster, [0, 1, 2]), 20.0, "the late node's seen mark")
    finally:
        cluster.stop()


def test_a_data_dir_of_the_release_before_identity_is_upgraded(tmp_path: Path) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text(format_config([("127.0.0.1", free_ports(1)[0])]))
    data = tmp_path / "node0"
    cmd = [sys.executable, "-m", "kvserver.main", "--id", "0", "-f", str(conf),
           "--data-dir", str(data)]
    for round_ in range(2):
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            with Clerk.from_config(conf, timeout=20.0) as ck:
                ck.put(f"k{round_}", "v")
                assert ck.get("k0") == b"v"
            proc.terminate()
            err = proc.communicate(timeout=20)[1]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        if round_ == 0:
            first = (data / "IDENTITY").read_text()
            (data / "IDENTITY").unlink()  # as an earlier release left it
        else:
            assert "has no IDENTITY (an earlier release)" in err
            assert (data / "IDENTITY").read_text() == first
