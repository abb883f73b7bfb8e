"""Fuzzing a live node with raw frames (issue 12, item 8).

Hypothesis builds KvServer requests with every field at its edge values (and
undecodable bodies), sends each as a raw frame to a real ``kvserver``
process, and checks the reply against a model of the documented behaviour:
``BAD_REQUEST`` for a field the server cannot honour, ``TOO_LARGE`` for a
size over a limit, otherwise the write applies exactly as the state machine
promises (at most once per ``(client_id, seq)``). Every acknowledged write
must be readable afterwards, and the node must never stop.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvserver import kv_pb2
from kvserver.launcher import Cluster
from kvserver.service import CLIENT_OPS
from rpc.codec import NEED_DATA, FrameDecoder, encode_request, request_header_tail
from rpc.rpc_pb2 import Header
from tests.e2e.harness import wait_leader

pytestmark = pytest.mark.timeout(300)

MAX_KEY, MAX_VALUE, MAX_REQUEST = 16, 64, 600
SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KvServer"].full_name
U64 = (1 << 64) - 1


class RawClient:
    """Blocking frames over one TCP connection; no clerk, no retries."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10.0)
        self.decoder = FrameDecoder()
        self.call_id = 0

    def call(self, method: str, body: bytes) -> tuple[Header, bytes]:
        self.call_id += 1
        frame = encode_request(self.call_id, request_header_tail(SERVICE, method), 10_000, body)
        self.sock.sendall(frame)
        while True:
            got = self.decoder.next_frame()
            if got is not NEED_DATA:
                header, reply = got
                assert header.call_id == self.call_id
                return header, reply
            data = self.sock.recv(1 << 20)
            assert data, "the node closed the connection"
            self.decoder.receive_data(data)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Session:
    ack_seq: int = 1
    applied: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)  # CAS seqs that did not swap


@dataclass
class Model:
    """What the store must hold: kvserver/state_machine.py's rules, restated."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    sessions: dict[int, Session] = field(default_factory=dict)

    def expect_write(self, r: kv_pb2.PutAppendRequest) -> tuple[int, bool]:
        """(err, swapped): swapped matters for an OK CAS only."""
        if (r.client_id == 0 or r.seq == 0 or r.ack_seq > r.seq
                or r.op not in CLIENT_OPS or (r.op == kv_pb2.DELETE and r.value)
                or (r.op != kv_pb2.CAS and r.HasField("expected"))):
            return kv_pb2.BAD_REQUEST, False
        old = self.data.get(r.key, b"")
        if (len(r.key) > MAX_KEY or len(r.value) > MAX_VALUE or len(r.expected) > MAX_VALUE
                or (r.op == kv_pb2.APPEND and len(old) + len(r.value) > MAX_VALUE)):
            return kv_pb2.TOO_LARGE, False
        session = self.sessions.setdefault(r.client_id, Session())
        session.ack_seq = max(session.ack_seq, r.ack_seq)
        if r.seq < session.ack_seq:
            return kv_pb2.OK, True  # a duplicate: acknowledged, not applied again
        if r.seq in session.applied:
            return kv_pb2.OK, r.seq not in session.failed  # the first answer again
        session.applied.add(r.seq)
        if r.op == kv_pb2.PUT:
            self.data[r.key] = r.value
        elif r.op == kv_pb2.APPEND:
            self.data[r.key] = old + r.value
        elif r.op == kv_pb2.DELETE:
            self.data.pop(r.key, None)
        elif self.data.get(r.key) == (r.expected if r.HasField("expected") else None):
            self.data[r.key] = r.value  # a CAS that swaps
        else:
            session.failed.add(r.seq)
            return kv_pb2.OK, False
        return kv_pb2.OK, True

    def expect_scan(self, r: kv_pb2.ScanRequest) -> kv_pb2.ScanReply:
        """The page: the limit (0: 1000, at most 10,000) and a byte budget of
        MAX_REQUEST (each pair its key, value and 16 bytes; at least one)."""
        if len(r.start) > MAX_KEY or len(r.end) > MAX_KEY:
            return kv_pb2.ScanReply(err=kv_pb2.TOO_LARGE)
        keys = sorted(k for k in self.data if k >= r.start and (not r.end or k < r.end))
        reply = kv_pb2.ScanReply(err=kv_pb2.OK)
        size, limit = 0, min(r.limit or 1000, 10_000)
        for key in keys:
            size += len(key) + len(self.data[key]) + 16
            if len(reply.pairs) == limit or (reply.pairs and size > MAX_REQUEST):
                reply.more, reply.next_start = True, key
                break
            reply.pairs.add(key=key, value=self.data[key])
        return reply

    def expect_get(self, r: kv_pb2.GetRequest) -> tuple[int, bytes]:
        if len(r.key) > MAX_KEY:
            return kv_pb2.TOO_LARGE, b""
        if r.key not in self.data:
            return kv_pb2.NO_KEY, b""
        return kv_pb2.OK, self.data[r.key]


def around(limit: int) -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1, limit - 1, limit, limit + 1, 2 * limit])


def bytes_of(lengths: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    # A few keys, so writes and reads meet; "é" is two UTF-8 bytes, 0xff
    # is no UTF-8 at all.
    return st.builds(lambda n, c: c * (n // len(c)), lengths,
                     st.sampled_from([b"k", b"q", "é".encode(), b"\xff", b"\x00"]))


def write(key: bytes, value: bytes, op: int, client_id: int, seq: int, ack: int,
          expected: bytes | None) -> kv_pb2.PutAppendRequest:
    request = kv_pb2.PutAppendRequest(
        key=key, value=value if op != kv_pb2.DELETE or ack % 2 else b"", op=op,  # type: ignore[arg-type]
        client_id=client_id, seq=seq, ack_seq=ack)
    if expected is not None:
        request.expected = expected
    return request


edge_u64 = st.sampled_from([0, 1, 2, 3, 1 << 32, 1 << 63, U64])
client_ids = st.sampled_from([0, 1, 2, 1 << 63, U64])
ops = st.sampled_from([kv_pb2.PUT, kv_pb2.APPEND, kv_pb2.DELETE, kv_pb2.CAS, kv_pb2.CAS,
                       4, 1 << 20, -1])
expecteds = st.one_of(st.none(), st.none(), bytes_of(around(MAX_VALUE)))
writes = st.builds(write, bytes_of(around(MAX_KEY)), bytes_of(around(MAX_VALUE)), ops,
                   client_ids, edge_u64, edge_u64, expecteds)
gets = st.builds(lambda key, cid: kv_pb2.GetRequest(key=key, client_id=cid),
                 bytes_of(around(MAX_KEY)), edge_u64)
scans = st.builds(lambda start, end, limit: kv_pb2.ScanRequest(start=start, end=end, limit=limit),
                  bytes_of(around(MAX_KEY)), bytes_of(around(MAX_KEY)),
                  st.sampled_from([0, 1, 2, 3, 1000, (1 << 32) - 1]))
garbage = st.binary(min_size=1, max_size=80)
actions = st.one_of(
    st.tuples(st.just("PutAppend"), writes),
    st.tuples(st.just("Get"), gets),
    st.tuples(st.just("Scan"), scans),
    st.tuples(st.sampled_from(["PutAppend", "Get", "Scan", "Batch", "TransferLeader"]),
              garbage),
    st.tuples(st.just("NoSuchMethod"), garbage),
)


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, RawClient]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cluster = Cluster(tmp / "cluster.conf", 1, tmp / "data", [
        "--max-key-bytes", str(MAX_KEY), "--max-value-bytes", str(MAX_VALUE),
        "--max-request-bytes", str(MAX_REQUEST)])
    cluster.start()
    try:
        wait_leader(cluster)
        client = RawClient(cluster.addresses[0])
        try:
            yield cluster, client
        finally:
            client.close()
    finally:
        cluster.stop()


MODEL = Model()


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(actions=st.lists(actions, min_size=1, max_size=8))
def test_every_request_gets_its_documented_answer(
        live_node: tuple[Cluster, RawClient], actions: list[tuple[str, Any]]) -> None:
    cluster, client = live_node
    for method, request in actions:
        body = request if isinstance(request, bytes) else request.SerializeToString()
        header, reply = client.call(method, body)
        if method == "NoSuchMethod":
            assert header.status == 2, header  # UNKNOWN_METHOD, connection kept
            continue
        parsed = parse(method, body)
        if parsed is None:
            assert header.status == 3, header  # BAD_REQUEST: undecodable body
            continue
        assert header.status == 0, header  # never HANDLER_ERROR
        check(method, parsed, reply)
    assert cluster.procs[0].poll() is None


def parse(method: str, body: bytes) -> Any:
    types = {"PutAppend": kv_pb2.PutAppendRequest, "Get": kv_pb2.GetRequest,
             "Scan": kv_pb2.ScanRequest,
             "Batch": kv_pb2.BatchRequest, "TransferLeader": kv_pb2.TransferLeaderRequest}
    try:
        return types[method].FromString(body)
    except DecodeError:
        return None


def check(method: str, request: Any, body: bytes) -> None:
    if method == "PutAppend":
        reply = kv_pb2.PutAppendReply.FromString(body)
        err, swapped = MODEL.expect_write(request)
        assert reply.err == err, (request, reply)
        if reply.err in (kv_pb2.BAD_REQUEST, kv_pb2.TOO_LARGE):
            assert reply.error
        if reply.err == kv_pb2.OK and request.op == kv_pb2.CAS:
            assert reply.swapped == swapped, (request, reply)
    elif method == "Get":
        reply = kv_pb2.GetReply.FromString(body)
        assert (reply.err, reply.value) == MODEL.expect_get(request), (request, reply)
    elif method == "Scan":
        reply = kv_pb2.ScanReply.FromString(body)
        assert bool(reply.error) == (reply.err == kv_pb2.TOO_LARGE), reply
        reply.ClearField("error")
        reply.leader_hint = 0
        assert reply == MODEL.expect_scan(request), (request, reply)
    elif method == "Batch":
        batch = kv_pb2.BatchReply.FromString(body)
        if batch.err != kv_pb2.OK:
            assert batch.err in (kv_pb2.BAD_REQUEST, kv_pb2.TOO_LARGE) and batch.error
            return
        # Operations of one batch are concurrent: check each write alone
        # only when no two touch the same key or client.
        for w, r in zip(request.writes, batch.writes, strict=True):
            if r.err == kv_pb2.BAD_REQUEST:
                assert MODEL.expect_write(w)[0] == kv_pb2.BAD_REQUEST
        for w, r in zip(request.writes, batch.writes, strict=True):
            if r.err == kv_pb2.OK:
                MODEL.expect_write(w)
        assert len(batch.gets) == len(request.gets)
    else:
        reply = kv_pb2.TransferLeaderReply.FromString(body)
        assert reply.err in (kv_pb2.OK, kv_pb2.BAD_REQUEST, kv_pb2.WRONG_LEADER,
                             kv_pb2.TIMEOUT), reply


def test_every_acknowledged_write_is_still_there(live_node: tuple[Cluster, RawClient]) -> None:
    cluster, client = live_node
    assert MODEL.data or MODEL.sessions, "the fuzz test above must run first"
    for key, value in MODEL.data.items():
        header, body = client.call("Get", kv_pb2.GetRequest(key=key).SerializeToString())
        reply = kv_pb2.GetReply.FromString(body)
        assert (header.status, reply.err, reply.value) == (0, kv_pb2.OK, value), key
    assert cluster.procs[0].poll() is None

