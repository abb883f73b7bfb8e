"""Protobuf RPC over asyncio TCP: the provider (server), channel and stubs (client).

Wire format, per frame and in both directions::

    uint32 big-endian L | varint H | rpc.Header (H bytes) | body (L - len(varint) - H bytes)

Many calls share one connection; responses are matched by `call_id`.

Server::

    provider = RpcProvider("127.0.0.1", 8000)
    provider.register(friend_pb2.DESCRIPTOR.services_by_name["FriendService"], FriendService())
    await provider.start()
    ...
    await provider.close()

Client::

    channel = RpcChannel("127.0.0.1", 8000)
    stub = Stub(channel, friend_pb2.DESCRIPTOR.services_by_name["FriendService"])
    reply = await stub.GetFriendsList(GetFriendsListRequest(userid=1), timeout=1.0)
    await channel.close()

Failures of a call raise `RpcError` with a `Status`. The sans-I/O codec is in
`rpc.codec` (FrameDecoder, encode); `rpc.loop.run` runs a coroutine on uvloop
when it is installed.
"""

from rpc._deadlines import DeadlineBuckets, loop_deadlines
from rpc._promise import Promise
from rpc.channel import RpcChannel, parse_response
from rpc.errors import LocalProtocolError, ProtocolError, RemoteProtocolError, RpcError, Status
from rpc.loop import install_uvloop, run
from rpc.provider import RpcProvider, returns_future
from rpc.stub import Stub, UnaryMethod, make_stub

__all__ = [
    "DeadlineBuckets",
    "LocalProtocolError",
    "Promise",
    "ProtocolError",
    "RemoteProtocolError",
    "RpcChannel",
    "RpcError",
    "RpcProvider",
    "Status",
    "Stub",
    "UnaryMethod",
    "install_uvloop",
    "loop_deadlines",
    "make_stub",
    "parse_response",
    "returns_future",
    "run",
]
