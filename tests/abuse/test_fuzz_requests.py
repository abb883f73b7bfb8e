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


@dataclass
class Model:
    """What the store must hold: kvserver/state_machine.py's rules, restated."""

    data: dict[str, str] = field(default_factory=dict)
    sessions: dict[int, Session] = field(default_factory=dict)

    def expect_write(self, r: kv_pb2.PutAppendRequest) -> int:
        if (r.client_id == 0 or r.seq == 0 or r.ack_seq > r.seq
                or r.op not in kv_pb2.Op.values() or (r.op == kv_pb2.DELETE and r.value)):
            return kv_pb2.BAD_REQUEST
        old = self.data.get(r.key, "")
        if (size(r.key) > MAX_KEY or size(r.value) > MAX_VALUE
                or (r.op == kv_pb2.APPEND and size(old) + size(r.value) > MAX_VALUE)):
            return kv_pb2.TOO_LARGE
        session = self.sessions.setdefault(r.client_id, Session())
        session.ack_seq = max(session.ack_seq, r.ack_seq)
        if r.seq < session.ack_seq or r.seq in session.applied:
            return kv_pb2.OK  # a duplicate: acknowledged, not applied again
        session.applied.add(r.seq)
        if r.op == kv_pb2.PUT:
            self.data[r.key] = r.value
        elif r.op == kv_pb2.APPEND:
            self.data[r.key] = old + r.value
        else:
            self.data.pop(r.key, None)
        return kv_pb2.OK

    def expect_get(self, r: kv_pb2.GetRequest) -> tuple[int, str]:
        if size(r.key) > MAX_KEY:
            return kv_pb2.TOO_LARGE, ""
        if r.key not in self.data:
            return kv_pb2.NO_KEY, ""
        return kv_pb2.OK, self.data[r.key]


def size(text: str) -> int:
    return len(text.encode("utf-8"))


def around(limit: int) -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1, limit - 1, limit, limit + 1, 2 * limit])


def text_of(lengths: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    # A few keys, so writes and reads meet; "é" is two UTF-8 bytes.
    return st.builds(lambda n, c: (c * n)[:n] if c == "k" else c * (n // len(c.encode())),
                     lengths, st.sampled_from(["k", "q", "é"]))


edge_u64 = st.sampled_from([0, 1, 2, 3, 1 << 32, 1 << 63, U64])
client_ids = st.sampled_from([0, 1, 2, 1 << 63, U64])
ops = st.sampled_from([kv_pb2.PUT, kv_pb2.APPEND, kv_pb2.DELETE, 3, 1 << 20, -1])
writes = st.builds(
    lambda key, value, op, client_id, seq, ack: kv_pb2.PutAppendRequest(
        key=key, value=value if op != kv_pb2.DELETE or ack % 2 else "", op=op,
        client_id=client_id, seq=seq, ack_seq=ack),
    text_of(around(MAX_KEY)), text_of(around(MAX_VALUE)), ops, client_ids, edge_u64, edge_u64)
gets = st.builds(lambda key, cid: kv_pb2.GetRequest(key=key, client_id=cid),
                 text_of(around(MAX_KEY)), edge_u64)
garbage = st.binary(min_size=1, max_size=80)
actions = st.one_of(
    st.tuples(st.just("PutAppend"), writes),
    st.tuples(st.just("Get"), gets),
    st.tuples(st.sampled_from(["PutAppend", "Get", "Batch", "TransferLeader"]), garbage),
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
             "Batch": kv_pb2.BatchRequest, "TransferLeader": kv_pb2.TransferLeaderRequest}
    try:
        return types[method].FromString(body)
    except DecodeError:
        return None


def check(method: str, request: Any, body: bytes) -> None:
    if method == "PutAppend":
        reply = kv_pb2.PutAppendReply.FromString(body)
        assert reply.err == MODEL.expect_write(request), (request, reply)
        if reply.err in (kv_pb2.BAD_REQUEST, kv_pb2.TOO_LARGE):
            assert reply.error
    elif method == "Get":
        reply = kv_pb2.GetReply.FromString(body)
        assert (reply.err, reply.value) == MODEL.expect_get(request), (request, reply)
    elif method == "Batch":
        batch = kv_pb2.BatchReply.FromString(body)
        if batch.err != kv_pb2.OK:
            assert batch.err in (kv_pb2.BAD_REQUEST, kv_pb2.TOO_LARGE) and batch.error
            return
        # Operations of one batch are concurrent: check each write alone
        # only when no two touch the same key or client.
        for w, r in zip(request.writes, batch.writes, strict=True):
            if r.err == kv_pb2.BAD_REQUEST:
                assert MODEL.expect_write(w) == kv_pb2.BAD_REQUEST
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

