"""Sans-I/O codec: frames in memory, no sockets."""

from __future__ import annotations

import itertools
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc import LocalProtocolError, ProtocolError, RemoteProtocolError, RpcError, Status, rpc_pb2
from rpc.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    NEED_DATA,
    Frame,
    FrameDecoder,
    encode,
    encode_ok_response,
    encode_request,
    encode_varint,
    request_header_tail,
)
from rpc.rpc_pb2 import RESPONSE, Header


def decode_all(decoder: FrameDecoder) -> list[Frame]:
    frames = []
    while (frame := decoder.next_frame()) is not NEED_DATA:
        frames.append(frame)
    return frames


def test_round_trip_one_frame() -> None:
    header = Header(call_id=7, service="a.B", method="C", timeout_ms=250)
    data = encode(header, b"body")
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    decoder = FrameDecoder()
    decoder.receive_data(data)
    frame = decoder.next_frame()
    assert frame == Frame(header, b"body")
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == 0


def test_empty_body_and_empty_header() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(Header(), b"") + encode(b"", b"x"))
    frames = decode_all(decoder)
    assert [f.body for f in frames] == [b"", b"x"]
    assert frames[1].header == Header()


def test_need_data_until_complete() -> None:
    data = encode(Header(call_id=1), b"x" * 100)
    decoder = FrameDecoder()
    for i, byte in enumerate(data):
        assert decoder.next_frame() is NEED_DATA
        decoder.receive_data(data[i : i + 1])
        assert byte == data[i]
    assert decoder.next_frame() == Frame(Header(call_id=1), b"x" * 100)


def test_accepts_bytearray_and_memoryview() -> None:
    data = encode(Header(call_id=3), b"abc")
    decoder = FrameDecoder()
    decoder.receive_data(bytearray(data[:5]))
    decoder.receive_data(memoryview(data)[5:])
    frame = decoder.next_frame()
    assert frame != NEED_DATA and frame.body == b"abc" and type(frame.body) is bytes


frame_st = st.tuples(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.text(max_size=40),
    st.text(max_size=40),
    st.binary(max_size=300),
)


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(frame_st, min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_split_of_the_stream_gives_the_same_frames(
    frames: list[tuple[int, str, str, bytes]], cuts: list[int]
) -> None:
    expected = [Frame(Header(call_id=c, service=s, method=m), b) for c, s, m, b in frames]
    stream = b"".join(encode(f.header, f.body) for f in expected)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    got: list[Frame] = []
    for a, b in itertools.pairwise(points):
        decoder.receive_data(stream[a:b])
        got.extend(decode_all(decoder))
    assert got == expected
    assert decoder.buffered == 0


@given(
    call_id=st.integers(min_value=0, max_value=2**64 - 1),
    timeout_ms=st.integers(min_value=0, max_value=2**32 - 1),
    service=st.text(max_size=30),
    method=st.text(max_size=30),
    body=st.binary(max_size=50),
)
def test_fast_path_encoders_match_protobuf(
    call_id: int, timeout_ms: int, service: str, method: str, body: bytes
) -> None:
    req = Header(call_id=call_id, service=service, method=method, timeout_ms=timeout_ms)
    tail = request_header_tail(service, method)
    assert encode_request(call_id, tail, timeout_ms, body) == encode(req, body)
    resp = Header(kind=RESPONSE, call_id=call_id)
    assert encode_ok_response(call_id, body) == encode(resp, body)


def test_4gib_length_prefix_refused_before_allocation() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.receive_data(b"\xff\xff\xff\xff")
        with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
            decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_configured_limit() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(struct.pack(">I", 101))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    ok = FrameDecoder(max_frame_size=100)
    ok.receive_data(encode(Header(), b"x" * 90, max_frame_size=100))
    assert ok.next_frame() != NEED_DATA
    assert DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=0)


def test_encoding_an_oversized_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Header(), b"x" * 200, max_frame_size=100)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (struct.pack(">I", 0), "empty frame"),
        (struct.pack(">I", 3) + b"\x05ab", "header length"),
        (struct.pack(">I", 7) + b"\xff" * 7, "varint"),
        (struct.pack(">I", 4) + b"\x03\xff\xff\xff", "undecodable frame header"),
    ],
    ids=["empty", "header-longer-than-frame", "bad-varint", "garbage-header"],
)
def test_malformed_frames_are_remote_errors(data: bytes, match: str) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        decoder.next_frame()


def test_multibyte_header_length() -> None:
    header = Header(service="s" * 200, method="m")
    decoder = FrameDecoder()
    decoder.receive_data(encode(header, b"z"))
    assert decoder.next_frame() == Frame(header, b"z")


def test_varint() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(300) == b"\xac\x02"


def test_status_mirrors_the_proto_enum() -> None:
    proto = {v.name: v.number for v in rpc_pb2.DESCRIPTOR.enum_types_by_name["Status"].values}
    assert proto == {s.name: int(s) for s in Status}


def test_error_classes() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(ProtocolError, RpcError)
    err = RpcError(Status.UNAVAILABLE, "down")
    assert err.status is Status.UNAVAILABLE and err.message == "down"
    assert str(err) == "UNAVAILABLE: down"
    assert RpcError(5).status is Status.DEADLINE_EXCEEDED
