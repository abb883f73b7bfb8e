"""Client stubs built from a protobuf ServiceDescriptor (no code generation).

    stub = Stub(channel, friend_pb2.DESCRIPTOR.services_by_name["FriendService"])
    reply = await stub.GetFriendsList(request, timeout=1.0)

Each method of the service becomes a `UnaryMethod` attribute. Response classes
come from protobuf's message factory, so they are the very classes of the
generated `_pb2` module. For static typing, `stub.X` is `UnaryMethod[Any, Any]`;
where precise types matter, bind one method with its types:

    get_friends: UnaryMethod[GetFriendsListRequest, GetFriendsListResponse] = (
        UnaryMethod(channel, service.methods_by_name["GetFriendsList"], GetFriendsListResponse))
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from rpc._codec import request_header_tail
from rpc.channel import RpcChannel, parse_response

__all__ = ["Stub", "UnaryMethod", "make_stub"]

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)


class UnaryMethod(Generic[ReqT, RespT]):
    """One callable RPC method: `await method(request, timeout=...)`."""

    __slots__ = ("_call", "_tail", "full_name", "name", "request_type",
                 "response_type", "service")

    def __init__(
        self,
        channel: RpcChannel,
        method: MethodDescriptor,
        response_type: type[RespT] | None = None,
    ) -> None:
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"{method.full_name}: streaming methods are not supported")
        self.name = method.name
        self.full_name = method.full_name
        self.service = method.containing_service.full_name
        self.request_type: type[Message] = GetMessageClass(method.input_type)
        factory_type = GetMessageClass(method.output_type)
        if response_type is not None and response_type is not factory_type:
            raise TypeError(
                f"{method.full_name} returns {factory_type.__name__}, "
                f"not {response_type.__name__}"
            )
        self.response_type: type[RespT] = factory_type  # type: ignore[assignment]
        self._tail = request_header_tail(self.service, self.name)
        self._call = channel._call

    def __repr__(self) -> str:
        return f"<UnaryMethod {self.full_name}>"

    async def __call__(self, request: ReqT, *, timeout: float | None = None) -> RespT:
        """Send `request`; the response, or RpcError with the call's status.

        Raises TypeError for a request of the wrong message type and
        rpc.LocalProtocolError for one above the channel's frame limit.
        """
        if type(request) is not self.request_type:
            raise TypeError(
                f"{self.full_name} takes {self.request_type.__name__}, "
                f"not {type(request).__name__}"
            )
        body = await self._call(self._tail, request.SerializeToString(), timeout)
        return parse_response(self.response_type, body)


class Stub:
    """Attribute access per method: `await stub.Method(request, timeout=1.0)`."""

    def __init__(self, channel: RpcChannel, descriptor: ServiceDescriptor) -> None:
        if not isinstance(descriptor, ServiceDescriptor):
            raise TypeError(f"expected a ServiceDescriptor, got {type(descriptor).__name__}")
        self._channel = channel
        self._descriptor = descriptor
        for md in descriptor.methods:
            # Stored in the instance dict so lookup never reaches __getattr__.
            self.__dict__[md.name] = UnaryMethod(channel, md)

    @property
    def channel(self) -> RpcChannel:
        return self._channel

    @property
    def descriptor(self) -> ServiceDescriptor:
        return self._descriptor

    def __getattr__(self, name: str) -> UnaryMethod[Any, Any]:
        # Only reached for names that are not methods of the service.
        raise AttributeError(f"service {self._descriptor.full_name} has no method {name!r}")

    def __repr__(self) -> str:
        return f"<Stub {self._descriptor.full_name} on {self._channel!r}>"


def make_stub(channel: RpcChannel, descriptor: ServiceDescriptor) -> Stub:
    """Same as `Stub(channel, descriptor)`."""
    return Stub(channel, descriptor)
