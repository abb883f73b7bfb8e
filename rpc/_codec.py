"""Sans-I/O frame codec, in the style of h11: bytes in, frames out, no sockets.

Frame layout (both directions)::

    uint32 big-endian L | varint H | Header (H bytes, protobuf) | body (L - len(varint) - H)

`FrameDecoder.receive_data()` takes whatever the transport delivered,
`next_frame()` returns one complete `Frame` or `NEED_DATA`; `encode()` turns a
header and body into bytes. Any split of the byte stream yields the same
frames. A length prefix above `max_frame_size` is refused as soon as its four
bytes arrive, before anything is buffered for it, so a peer cannot make us
allocate 4 GiB by sending a large number.

Hot path notes (this code runs once per call on each side): the common case
is a transport chunk holding whole frames, parsed straight out of the `bytes`
object we were handed; only a partial tail is copied into a `bytearray`.
Consumed bytes are dropped once per `receive_data`, not once per frame.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, Literal, NamedTuple

from google.protobuf.message import DecodeError

from rpc.errors import LocalProtocolError, RemoteProtocolError
from rpc.rpc_pb2 import Header

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "NEED_DATA",
    "Frame",
    "FrameDecoder",
    "NeedData",
    "encode",
    "encode_ok_response",
    "encode_request",
    "encode_varint",
    "request_header_tail",
]

DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
_MAX_VARINT32_BYTES: Final = 5

_U32 = struct.Struct(">I")
_pack_u32 = _U32.pack
_unpack_u32_from = _U32.unpack_from
_parse_header = Header.FromString


class NeedData(enum.Enum):
    """Sentinel type: the buffer does not hold a complete frame yet."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class Frame(NamedTuple):
    """One decoded frame. A NamedTuple rather than a dataclass: it is
    immutable and much cheaper to build, and one is built per call."""

    header: Header
    body: bytes


# Header lengths below 128 (all realistic headers) need one varint byte;
# precomputing them saves a call per frame.
_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(0x80))


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    # Straight-line cases for the sizes call ids and timeouts usually have.
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)




def encode(
    header: Header | bytes, body: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Serialize one frame. `header` may be pre-serialized Header bytes.

    Raises LocalProtocolError if the frame would exceed `max_frame_size`
    (the peer would refuse it and drop the connection).
    """
    hb = header if isinstance(header, bytes) else header.SerializeToString()
    hlen = len(hb)
    hv = _SMALL_VARINTS[hlen] if hlen < 0x80 else encode_varint(hlen)
    length = len(hv) + hlen + len(body)
    if length > max_frame_size:
        raise LocalProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame_size}")
    return _pack_u32(length) + hv + hb + body


class FrameDecoder:
    """Incremental decoder for a stream of frames from one peer.

    Raises RemoteProtocolError (the peer's fault) on an oversized length
    prefix, a malformed header length or an undecodable header; after that
    the stream is out of sync and the connection must be closed.
    """

    __slots__ = ("_buf", "_pos", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= 0xFFFFFFFF:
            raise ValueError("max_frame_size must be in 1..2**32-1")
        self.max_frame_size = max_frame_size
        # `_buf[_pos:]` is the unconsumed data. It is the caller's bytes object
        # when nothing was left over from before (no copy), else a bytearray.
        self._buf: bytes | bytearray = b""
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the transport (any split of the stream is fine)."""
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # Everything consumed: adopt the new chunk as is.
            self._buf = data if isinstance(data, bytes) else bytes(data)
            self._pos = 0
        elif isinstance(buf, bytearray):
            if pos:
                del buf[:pos]
                self._pos = 0
            buf += data
        else:
            nb = bytearray(memoryview(buf)[pos:])
            nb += data
            self._buf = nb
            self._pos = 0

    def next_frame(self) -> Frame | Literal[NeedData.NEED_DATA]:
        """The next complete frame, or NEED_DATA."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4:
            return NEED_DATA
        (length,) = _unpack_u32_from(buf, pos)
        if length > self.max_frame_size:
            # Checked before waiting for (or buffering) the payload.
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.max_frame_size}"
            )
        if avail - 4 < length:
            return NEED_DATA
        start = pos + 4
        end = start + length
        if length == 0:
            raise RemoteProtocolError("empty frame (no header length)")
        hlen = buf[start]
        p = start + 1
        if hlen >= 0x80:
            hlen, p = self._long_varint(buf, start, end)
        hend = p + hlen
        if hend > end:
            raise RemoteProtocolError(f"header length {hlen} exceeds frame length {length}")
        try:
            # upb parses bytearray slices too; the stub only says bytes.
            header = _parse_header(buf[p:hend])  # type: ignore[arg-type]
        except DecodeError as exc:
            raise RemoteProtocolError(f"undecodable frame header: {exc}") from None
        body = buf[hend:end]
        self._pos = end
        if type(body) is not bytes:
            body = bytes(body)
        return Frame(header, body)

    @staticmethod
    def _long_varint(buf: bytes | bytearray, start: int, end: int) -> tuple[int, int]:
        result = 0
        shift = 0
        p = start
        while True:
            if p >= end or p - start >= _MAX_VARINT32_BYTES:
                raise RemoteProtocolError("malformed header length varint")
            b = buf[p]
            p += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, p
            shift += 7


# -- Fast paths for the two headers built once per call ------------------------
#
# Building a Header message and serializing it costs ~2.5 us under upb; these
# produce the same bytes (protobuf's canonical field order; tests compare them
# with SerializeToString) from precomputed pieces.

_TAG_KIND_RESPONSE: Final = b"\x08\x01"  # field 1 (kind), varint, RESPONSE=1
_TAG_CALL_ID: Final = b"\x10"  # field 2, varint
_TAG_TIMEOUT_MS: Final = b"\x28"  # field 5, varint


def request_header_tail(service: str, method: str) -> bytes:
    """The service and method fields (3 and 4) of a request header, serialized.

    Precompute once per method; `encode_request` puts the call id before it.
    """
    return Header(service=service, method=method).SerializeToString()


def encode_request(
    call_id: int,
    tail: bytes,
    timeout_ms: int,
    body: bytes,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """Frame for a request; equal to encode(Header(kind=REQUEST, call_id=..., ...))."""
    # encode() inlined: this runs once per call on the client.
    hb = _TAG_CALL_ID + encode_varint(call_id) + tail if call_id else tail
    if timeout_ms:
        hb += _TAG_TIMEOUT_MS + encode_varint(timeout_ms)
    hlen = len(hb)
    hv = _SMALL_VARINTS[hlen] if hlen < 0x80 else encode_varint(hlen)
    length = len(hv) + hlen + len(body)
    if length > max_frame_size:
        raise LocalProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame_size}")
    return b"".join((_pack_u32(length), hv, hb, body))


def encode_ok_response(
    call_id: int, body: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Frame for an OK response; equal to encode(Header(kind=RESPONSE, call_id=...))."""
    if call_id:
        hb = _TAG_KIND_RESPONSE + _TAG_CALL_ID + encode_varint(call_id)
    else:
        hb = _TAG_KIND_RESPONSE
    return encode(hb, body, max_frame_size=max_frame_size)
