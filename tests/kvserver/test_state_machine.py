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


def b(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def cmd(op: int, key: str | bytes, value: str | bytes = b"", client: int = 1, seq: int = 1,
        ack: int = 1, stamp: int = 0, max_value: int = 0) -> bytes:
    return encode_command(kv_pb2.Command(op=op, key=b(key), value=b(value),  # type: ignore[arg-type]
                                         client_id=client, seq=seq, ack_seq=ack, stamp_ms=stamp,
                                         max_value_bytes=max_value))


def test_append_past_the_stamped_limit_is_refused_and_not_recorded() -> None:
    sm = KvStateMachine()
    assert sm.apply_command(1, cmd(kv_pb2.APPEND, "k", "abc", seq=1, max_value=5)) is Applied.DONE
    # Would leave 6 bytes (UTF-8: "é" is two): refused, nothing changes.
    refused = sm.apply_command(2, cmd(kv_pb2.APPEND, "k", "xé", seq=2, max_value=5))
    assert refused is Applied.TOO_LARGE
    assert sm.get(b"k") == b"abc"
    # The refused seq is not recorded: after the value shrank, its retry applies once.
    sm.apply_command(3, cmd(kv_pb2.PUT, "k", "a", seq=3, max_value=5))
    assert sm.apply_command(4, cmd(kv_pb2.APPEND, "k", "xé", seq=2, max_value=5)) is Applied.DONE
    again = sm.apply_command(5, cmd(kv_pb2.APPEND, "k", "xé", seq=2, max_value=5))
    assert again is Applied.DUPLICATE
    assert sm.get(b"k") == "axé".encode()
    # Exactly at the limit is allowed; 0 (older commands) means no limit.
    assert sm.apply_command(6, cmd(kv_pb2.APPEND, "k", "z", seq=6, max_value=5)) is Applied.DONE
    assert sm.apply_command(7, cmd(kv_pb2.APPEND, "k", "z" * 100, seq=7)) is Applied.DONE


def test_put_append_delete_and_missing_key() -> None:
    sm = KvStateMachine()
    assert sm.get(b"k") is None
    sm.apply_command(1, cmd(kv_pb2.APPEND, "k", "a", seq=1))  # append to missing starts from ""
    sm.apply_command(2, cmd(kv_pb2.APPEND, "k", "b", seq=2))
    assert sm.get(b"k") == b"ab"
    sm.apply_command(3, cmd(kv_pb2.PUT, "k", "z", seq=3))
    assert sm.get(b"k") == b"z"
    sm.apply_command(4, cmd(kv_pb2.DELETE, "k", seq=4))
    assert sm.get(b"k") is None


def test_retried_request_applies_once() -> None:
    sm = KvStateMachine()
    assert sm.apply_command(1, cmd(kv_pb2.APPEND, "k", "x", seq=1)) is Applied.DONE
    assert sm.apply_command(2, cmd(kv_pb2.APPEND, "k", "x", seq=1)) is Applied.DUPLICATE
    assert sm.get(b"k") == b"x"


def test_out_of_order_in_flight_requests_apply_once_each() -> None:
    # An AsyncClerk has seqs 1..3 in flight; they commit as 3, 1, then retries
    # of 1 and 3 arrive, then 2.
    sm = KvStateMachine()
    order = [3, 1, 1, 3, 2, 2]
    for i, seq in enumerate(order, start=1):
        sm.apply_command(i, cmd(kv_pb2.APPEND, "k", str(seq), seq=seq, ack=1))
    assert sm.get(b"k") == b"312"


def test_acknowledged_replies_are_forgotten_but_still_deduplicated() -> None:
    sm = KvStateMachine()
    for seq in range(1, 101):
        sm.apply_command(seq, cmd(kv_pb2.PUT, "k", str(seq), seq=seq, ack=seq))
    snap = kv_pb2.KvSnapshot.FromString(sm.snapshot())
    (session,) = snap.sessions
    assert list(session.applied_seqs) == [100]  # bounded: only seqs >= ack_seq
    # A very late duplicate of seq 5 must not roll the value back.
    assert sm.apply_command(101, cmd(kv_pb2.PUT, "k", "5", seq=5, ack=5)) is Applied.DUPLICATE
    assert sm.get(b"k") == b"100"


def test_idle_sessions_expire_by_leader_stamp() -> None:
    sm = KvStateMachine(session_ttl_ms=1000)
    sm.apply_command(1, cmd(kv_pb2.PUT, "a", "1", client=1, seq=1, stamp=0))
    sm.apply_command(2, cmd(kv_pb2.PUT, "b", "1", client=2, seq=1, stamp=500))
    sm.apply_command(3, cmd(kv_pb2.PUT, "c", "1", client=3, seq=1, stamp=1200))
    assert sm.session_count == 2  # client 1 idle 1200 ms > 1000 ms
    # A stamp going backwards (a new leader with a slower clock) does not
    # move the clock back.
    sm.apply_command(4, cmd(kv_pb2.PUT, "d", "1", client=4, seq=1, stamp=100))
    assert sm.session_count == 3


def test_session_table_is_bounded() -> None:
    sm = KvStateMachine(max_sessions=10)
    for client in range(1, 51):
        sm.apply_command(client, cmd(kv_pb2.PUT, "k", "v", client=client, seq=1))
    assert sm.session_count == 10


def test_snapshot_restores_keys_and_sessions() -> None:
    sm = KvStateMachine()
    sm.apply_command(1, cmd(kv_pb2.APPEND, "k", "x", seq=1))
    other = KvStateMachine()
    other.restore(sm.snapshot())
    assert other.get(b"k") == b"x"
    # The dedup survived the snapshot.
    assert other.apply_command(2, cmd(kv_pb2.APPEND, "k", "x", seq=1)) is Applied.DUPLICATE
    assert other.get(b"k") == b"x"
    other.restore(b"")
    assert other.get(b"k") is None


def test_bad_snapshots_are_refused() -> None:
    sm = KvStateMachine()
    with pytest.raises(SnapshotFormatError, match="version 9"):
        sm.restore(kv_pb2.KvSnapshot(version=9).SerializeToString())
    with pytest.raises(SnapshotFormatError, match="undecodable"):
        sm.restore(b"\xff\xff\xff")


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 8)),
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
        a.apply_command(i, data)
        b.apply_command(i, data)
    c = KvStateMachine()
    c.restore(b.snapshot())
    for i, data in enumerate(log[cut:], start=cut + 1):
        assert a.apply_command(i, data) == c.apply_command(i, data)  # a retried CAS's answer too
    assert a.snapshot() == c.snapshot()


# -- bytes, ordered reads and compare-and-set (issue 14) --------------------------

def cas(key: bytes, expected: bytes | None, new: bytes, seq: int, client: int = 1,
        ack: int = 1) -> bytes:
    command = kv_pb2.Command(op=kv_pb2.CAS, key=key, value=new, client_id=client, seq=seq,
                             ack_seq=ack)
    if expected is not None:
        command.expected = expected
    return encode_command(command)


def test_keys_and_values_are_any_bytes() -> None:
    sm = KvStateMachine()
    sm.apply_command(1, cmd(kv_pb2.PUT, b"\x00\xff", b"\xff\x00\xfe", seq=1))
    sm.apply_command(2, cmd(kv_pb2.PUT, b"", b"empty key", seq=2))
    sm.apply_command(3, cmd(kv_pb2.APPEND, b"\x00\xff", b"\x80", seq=3))
    sm.apply_command(4, cmd(kv_pb2.PUT, b"\x00", b"", seq=4))
    assert sm.get(b"\x00\xff") == b"\xff\x00\xfe\x80"
    assert sm.get(b"") == b"empty key"
    assert sm.get(b"\x00") == b""  # an empty value is present, not absent
    assert sm.get(b"\x00\xfe") is None
    assert sm.value_size(b"\x00\xff") == 4
    other = KvStateMachine()
    other.restore(sm.snapshot())
    assert other.scan(b"", None, 10, 1 << 20).pairs == [
        (b"", b"empty key"), (b"\x00", b""), (b"\x00\xff", b"\xff\x00\xfe\x80")]


#: A snapshot and a log entry written by the release before keys and values
#: became bytes (commit 86b7bb0; KvSnapshot.data was map<string, string>):
#: keys "a" -> "1", "é" -> "x y", "" -> "" and the sessions of clients 5 and 9.
OLD_SNAPSHOT = bytes.fromhex(
    "080112060a016112013112090a02c3a9120378207912040a0012001a0d080510011a02010220c801"
    "28021a0c080910011a010120ac02280320ac02")
OLD_APPEND = bytes.fromhex("08011202c3a91a0378207920052802300138c80140808040")


def test_a_snapshot_and_a_log_entry_of_the_previous_release_still_load() -> None:
    sm = KvStateMachine()
    sm.restore(OLD_SNAPSHOT)
    assert sm.get(b"a") == b"1"
    assert sm.get("é".encode()) == b"x y"
    assert sm.get(b"") == b""
    assert (sm.session_count, sm.clock_ms) == (2, 300)
    # The old entry (client 5's seq 2, an APPEND of "x y" to "é") was applied
    # before that snapshot: a duplicate now.
    assert sm.apply_command(4, OLD_APPEND) is Applied.DUPLICATE
    assert sm.get("é".encode()) == b"x y"
    fresh = KvStateMachine()
    assert fresh.apply_command(1, OLD_APPEND) is Applied.DONE
    assert fresh.get("é".encode()) == b"x y"
    # What this release writes for the same state reads the same.
    again = KvStateMachine()
    again.restore(sm.snapshot())
    assert again.snapshot() == sm.snapshot()
    old, new = (kv_pb2.KvSnapshot.FromString(s).data for s in (OLD_SNAPSHOT, sm.snapshot()))
    assert sorted((p.key, p.value) for p in old) == [(p.key, p.value) for p in new]


def filled(keys: list[bytes], value: bytes = b"v") -> KvStateMachine:
    sm = KvStateMachine()
    for i, key in enumerate(keys, start=1):
        sm.apply_command(i, cmd(kv_pb2.PUT, key, value, seq=i))
    return sm


def test_scan_reads_a_range_in_byte_order() -> None:
    keys = [b"b", b"a", b"a\x00", b"a\xff", b"ab", b"\xff", b"", b"c"]
    sm = filled(keys)
    whole = sm.scan(b"", None, 100, 1 << 20)
    assert [k for k, _ in whole.pairs] == sorted(keys)
    assert (whole.next_start, whole.more) == (None, False)
    assert [k for k, _ in sm.scan(b"a", b"b", 100, 1 << 20).pairs] == [
        b"a", b"a\x00", b"ab", b"a\xff"]  # start inclusive, end exclusive
    assert [k for k, _ in sm.scan(b"a\x01", b"a\x02", 100, 1 << 20).pairs] == []
    assert [k for k, _ in sm.scan(b"a\x01", b"b", 100, 1 << 20).pairs] == [b"ab", b"a\xff"]
    assert sm.scan(b"b", b"a", 100, 1 << 20) == ([], None)  # end before start: empty
    assert sm.scan(b"\xff\x00", None, 100, 1 << 20) == ([], None)  # past the last key


def test_scan_pages_by_count_and_bytes_and_continues_where_it_stopped() -> None:
    keys = [b"k%02d" % i for i in range(20)]
    sm = filled(keys, b"x" * 7)  # each pair 3 + 7 bytes
    page = sm.scan(b"k", None, 5, 1 << 20)
    assert [k for k, _ in page.pairs] == keys[:5] and page.next_start == b"k05"
    page = sm.scan(b"k", None, 100, 35)  # 3 pairs are 30 bytes, 4 would be 40
    assert len(page.pairs) == 3 and page.next_start == b"k03"
    page = sm.scan(b"k", None, 100, 35, overhead=5)  # 15 a pair: 2 fit
    assert len(page.pairs) == 2 and page.next_start == b"k02"
    # A pair over the whole budget still comes alone: a page is never empty.
    page = sm.scan(b"k", None, 100, 1)
    assert len(page.pairs) == 1 and page.more
    # Continuing from next_start, pages tile the range exactly.
    seen: list[bytes] = []
    start: bytes | None = b"k03"
    while start is not None:
        pairs, start = sm.scan(start, b"k17", 4, 1 << 20)
        seen += [k for k, _ in pairs]
    assert seen == keys[3:17]


#: Few keys, so that writes meet (deletes of present keys, puts of new ones).
FEW_KEYS = st.sampled_from([b"", b"\x00", b"a", b"a\x00", b"ab", b"a\xff", b"b", b"\xff"])


@given(st.lists(st.tuples(st.sampled_from([kv_pb2.PUT, kv_pb2.DELETE, kv_pb2.APPEND]),
                          FEW_KEYS), max_size=80),
       st.integers(0, 80), FEW_KEYS | st.binary(max_size=2), FEW_KEYS | st.binary(max_size=2))
def test_scan_matches_a_sorted_dict_after_any_writes(
        ops: list[tuple[int, bytes]], first_scan: int, start: bytes, end: bytes) -> None:
    """The key index, built at the first scan and kept up by every write
    after it, always lists exactly the keys present, in order."""
    sm, model = KvStateMachine(), dict[bytes, bytes]()
    cut = first_scan % (len(ops) + 1)
    for i, (op, key) in enumerate(ops, start=1):
        if i == cut:
            sm.scan(b"", None, 1, 0)  # builds the index midway
        sm.apply_command(i, cmd(op, key, b"%d" % i, seq=i))
        if op == kv_pb2.DELETE:
            model.pop(key, None)
        else:
            model[key] = (model.get(key, b"") if op == kv_pb2.APPEND else b"") + b"%d" % i
    expected = sorted((k, v) for k, v in model.items() if k >= start and (not end or k < end))
    assert sm.scan(start, end or None, 1000, 1 << 20).pairs == expected
    # The snapshot lists the pairs in key order (from the index, once built).
    data = kv_pb2.KvSnapshot.FromString(sm.snapshot()).data
    assert [(pair.key, pair.value) for pair in data] == sorted(model.items())


def test_cas_swaps_only_on_a_match_and_none_means_absent() -> None:
    sm = KvStateMachine()
    assert sm.apply_command(1, cas(b"k", None, b"v1", seq=1)) is Applied.DONE  # absent: swaps
    assert sm.get(b"k") == b"v1"
    assert sm.apply_command(2, cas(b"k", None, b"v2", seq=2)) is Applied.NOT_SWAPPED  # present now
    assert sm.apply_command(3, cas(b"k", b"v2", b"v3", seq=3)) is Applied.NOT_SWAPPED  # wrong value
    assert sm.get(b"k") == b"v1"
    assert sm.apply_command(4, cas(b"k", b"v1", b"\x00\xff", seq=4)) is Applied.DONE
    assert sm.get(b"k") == b"\x00\xff"
    # An empty value is not absent, and an absent key does not hold b"".
    sm.apply_command(5, cmd(kv_pb2.PUT, b"e", b"", seq=5))
    assert sm.apply_command(6, cas(b"e", None, b"x", seq=6)) is Applied.NOT_SWAPPED
    assert sm.apply_command(7, cas(b"e", b"", b"x", seq=7)) is Applied.DONE
    assert sm.apply_command(8, cas(b"gone", b"", b"x", seq=8)) is Applied.NOT_SWAPPED
    assert sm.get(b"gone") is None


def test_a_retried_cas_gets_its_first_answer_even_after_a_snapshot() -> None:
    sm = KvStateMachine()
    assert sm.apply_command(1, cas(b"k", None, b"a", seq=1)) is Applied.DONE
    assert sm.apply_command(2, cas(b"k", b"zzz", b"b", seq=2)) is Applied.NOT_SWAPPED
    # Retries with the same seqs: not applied again, answered as before,
    # although re-evaluating them now would give the opposite answers.
    sm.apply_command(3, cmd(kv_pb2.PUT, b"k", b"zzz", seq=3))
    assert sm.apply_command(4, cas(b"k", None, b"a", seq=1)) is Applied.DUPLICATE  # = swapped
    assert sm.apply_command(5, cas(b"k", b"zzz", b"b", seq=2)) is Applied.NOT_SWAPPED
    assert sm.get(b"k") == b"zzz"
    other = KvStateMachine()
    other.restore(sm.snapshot())
    assert other.apply_command(6, cas(b"k", b"zzz", b"b", seq=2)) is Applied.NOT_SWAPPED
    assert other.apply_command(7, cas(b"k", None, b"a", seq=1)) is Applied.DUPLICATE
    assert other.get(b"k") == b"zzz"


def test_cas_answers_are_forgotten_with_the_acknowledged_seqs() -> None:
    sm = KvStateMachine()
    for seq in range(1, 41):  # every CAS fails; the client acknowledges as it goes
        assert sm.apply_command(seq, cas(b"k", b"x", b"y", seq=seq, ack=seq)) is Applied.NOT_SWAPPED
    (session,) = kv_pb2.KvSnapshot.FromString(sm.snapshot()).sessions
    assert list(session.applied_seqs) == [40] and list(session.failed_seqs) == [40]
    assert len(sm._sessions[1].failed) < 20  # pruned in memory too
    # Below ack_seq nobody waits for the answer: a plain duplicate.
    assert sm.apply_command(41, cas(b"k", b"x", b"y", seq=5, ack=40)) is Applied.DUPLICATE
    assert sm.apply_command(42, cas(b"k", b"x", b"y", seq=40, ack=40)) is Applied.NOT_SWAPPED
