"""Public face of the sans-I/O frame codec (implementation in rpc._codec)."""

from rpc._codec import (
    DEFAULT_MAX_FRAME_SIZE,
    NEED_DATA,
    Frame,
    FrameDecoder,
    NeedData,
    encode,
    encode_ok_response,
    encode_request,
    encode_varint,
    request_header_tail,
)
from rpc.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "NEED_DATA",
    "Frame",
    "FrameDecoder",
    "LocalProtocolError",
    "NeedData",
    "ProtocolError",
    "RemoteProtocolError",
    "encode",
    "encode_ok_response",
    "encode_request",
    "encode_varint",
    "request_header_tail",
]
