"""The KV state machine: operations, at-most-once sessions, expiry, snapshots."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvserver import kv_pb2
from kvserver.state_machine import (
    Applied,
    KvStateMachine,
    SnapshotFormatError,
    encode_command,
)


def cmd(op: int, key: str, value: str = "", client: int = 1, seq: int = 1,
        ack: int = 1, stamp: int = 0, max_value: int = 0) -> bytes:
    return encode_command(kv_pb2.Command(op=op, key=key, value=value, client_id=client,  # type: ignore[arg-type]
                                         seq=seq, ack_seq=ack, stamp_ms=stamp,
                                         max_value_bytes=max_value))


def test_append_past_the_stamped_limit_is_refused_and_not_recorded() -> None:
    sm = KvStateMachine()
    assert sm.apply(1, cmd(kv_pb2.APPEND, "k", "abc", seq=1, max_value=5)) is Applied.DONE
    # Would leave 6 bytes (UTF-8: "é" is two): refused, nothing changes.
    assert sm.apply(2, cmd(kv_pb2.APPEND, "k", "xé", seq=2, max_value=5)) is Applied.TOO_LARGE
    assert sm.get("k") == "abc"
    # The refused seq is not recorded: after the value shrank, its retry applies once.
    sm.apply(3, cmd(kv_pb2.PUT, "k", "a", seq=3, max_value=5))
    assert sm.apply(4, cmd(kv_pb2.APPEND, "k", "xé", seq=2, max_value=5)) is Applied.DONE
    assert sm.apply(5, cmd(kv_pb2.APPEND, "k", "xé", seq=2, max_value=5)) is Applied.DUPLICATE
    assert sm.get("k") == "axé"
    # Exactly at the limit is allowed; 0 (older commands) means no limit.
    assert sm.apply(6, cmd(kv_pb2.APPEND, "k", "z", seq=6, max_value=5)) is Applied.DONE
    assert sm.apply(7, cmd(kv_pb2.APPEND, "k", "z" * 100, seq=7)) is Applied.DONE


def test_put_append_delete_and_missing_key() -> None:
    sm = KvStateMachine()
    assert sm.get("k") is None
    sm.apply(1, cmd(kv_pb2.APPEND, "k", "a", seq=1))  # append to missing starts from ""
    sm.apply(2, cmd(kv_pb2.APPEND, "k", "b", seq=2))
    assert sm.get("k") == "ab"
    sm.apply(3, cmd(kv_pb2.PUT, "k", "z", seq=3))
    assert sm.get("k") == "z"
    sm.apply(4, cmd(kv_pb2.DELETE, "k", seq=4))
    assert sm.get("k") is None


def test_retried_request_applies_once() -> None:
    sm = KvStateMachine()
    assert sm.apply(1, cmd(kv_pb2.APPEND, "k", "x", seq=1)) is Applied.DONE
    assert sm.apply(2, cmd(kv_pb2.APPEND, "k", "x", seq=1)) is Applied.DUPLICATE
    assert sm.get("k") == "x"


def test_out_of_order_in_flight_requests_apply_once_each() -> None:
    # An AsyncClerk has seqs 1..3 in flight; they commit as 3, 1, then retries
    # of 1 and 3 arrive, then 2.
    sm = KvStateMachine()
    order = [3, 1, 1, 3, 2, 2]
    for i, seq in enumerate(order, start=1):
        sm.apply(i, cmd(kv_pb2.APPEND, "k", str(seq), seq=seq, ack=1))
    assert sm.get("k") == "312"


def test_acknowledged_replies_are_forgotten_but_still_deduplicated() -> None:
    sm = KvStateMachine()
    for seq in range(1, 101):
        sm.apply(seq, cmd(kv_pb2.PUT, "k", str(seq), seq=seq, ack=seq))
    snap = kv_pb2.KvSnapshot.FromString(sm.snapshot())
    (session,) = snap.sessions
    assert list(session.applied_seqs) == [100]  # bounded: only seqs >= ack_seq
    # A very late duplicate of seq 5 must not roll the value back.
    assert sm.apply(101, cmd(kv_pb2.PUT, "k", "5", seq=5, ack=5)) is Applied.DUPLICATE
    assert sm.get("k") == "100"


def test_idle_sessions_expire_by_leader_stamp() -> None:
    sm = KvStateMachine(session_ttl_ms=1000)
    sm.apply(1, cmd(kv_pb2.PUT, "a", "1", client=1, seq=1, stamp=0))
    sm.apply(2, cmd(kv_pb2.PUT, "b", "1", client=2, seq=1, stamp=500))
    sm.apply(3, cmd(kv_pb2.PUT, "c", "1", client=3, seq=1, stamp=1200))
    assert sm.session_count == 2  # client 1 idle 1200 ms > 1000 ms
    # A stamp going backwards (a new leader with a slower clock) does not
    # move the clock back.
    sm.apply(4, cmd(kv_pb2.PUT, "d", "1", client=4, seq=1, stamp=100))
    assert sm.session_count == 3


def test_session_table_is_bounded() -> None:
    sm = KvStateMachine(max_sessions=10)
    for client in range(1, 51):
        sm.apply(client, cmd(kv_pb2.PUT, "k", "v", client=client, seq=1))
    assert sm.session_count == 10


def test_snapshot_restores_keys_and_sessions() -> None:
    sm = KvStateMachine()
    sm.apply(1, cmd(kv_pb2.APPEND, "k", "x", seq=1))
    other = KvStateMachine()
    other.restore(sm.snapshot())
    assert other.get("k") == "x"
    # The dedup survived the snapshot.
    assert other.apply(2, cmd(kv_pb2.APPEND, "k", "x", seq=1)) is Applied.DUPLICATE
    assert other.get("k") == "x"
    other.restore(b"")
    assert other.get("k") is None


def test_bad_snapshots_are_refused() -> None:
    sm = KvStateMachine()
    with pytest.raises(SnapshotFormatError, match="version 9"):
        sm.restore(kv_pb2.KvSnapshot(version=9).SerializeToString())
    with pytest.raises(SnapshotFormatError, match="undecodable"):
        sm.restore(b"\xff\xff\xff")


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(1, 8)),
                max_size=60), st.integers(0, 2**32))
def test_replicas_agree_and_snapshots_are_deterministic(ops: list[tuple[int, int, int]],
                                                       seed: int) -> None:
    """Two replicas applying the same log agree, and a replica restored from a
    snapshot midway ends in the same state (the FSM contract)."""
    rng = random.Random(seed)
    log = [cmd(op, f"k{key}", f"v{i}", client=rng.randint(1, 3), seq=seq)
           for i, (op, key, seq) in enumerate(ops)]
    a, b = KvStateMachine(), KvStateMachine()
    cut = len(log) // 2
    for i, data in enumerate(log[:cut], start=1):
        a.apply(i, data)
        b.apply(i, data)
    c = KvStateMachine()
    c.restore(b.snapshot())
    for i, data in enumerate(log[cut:], start=cut + 1):
        a.apply(i, data)
        c.apply(i, data)
    assert a.snapshot() == c.snapshot()
