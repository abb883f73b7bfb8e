"""Raft messages over the ``rpc`` framework (``raftRpc`` in raft.proto).

Sending: each request message becomes a call of the raftRpc method named for
its type on the channel to its destination; the reply (the peer's response,
sent after the peer persisted what it depends on) is stepped into our node.
Each peer has its own multiplexed channel and every call is independent (a
callback on the reply, or a Task while connecting), so a dead or slow peer
only fails its own calls (the channel fails fast while it
backs off reconnecting) and never blocks the others. A failed call tells the
core the peer is unreachable, which sends it back to probing.

Receiving: ``RaftService`` is registered on the node's ``RpcProvider`` (the
same port serves clients). A request is handed to
``RaftNode.handle_request``, whose result is the reply. Peers are
identified by the ``src`` id inside the message, never by the connection's
source address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from functools import partial

from raft import raft_pb2
from raft.snapshot_stream import SnapshotReceiver, SnapshotSender
from raft.types import Entry, Message, MessageType
from raft.wire import RPC_METHOD, message_from_pb, message_to_pb, pack_entries
from rpc import Promise, RpcChannel, RpcError, Status, parse_response, returns_future
from rpc.codec import DEFAULT_MAX_FRAME_SIZE

__all__ = ["RAFT_SERVICE", "RaftService", "RpcTransport"]

log = logging.getLogger("raft.transport")

RAFT_SERVICE = raft_pb2.DESCRIPTOR.services_by_name["raftRpc"]
_SERVICE_NAME = RAFT_SERVICE.full_name
#: Which message types each raftRpc method may carry.
_ALLOWED: dict[str, frozenset[MessageType]] = {
    method: frozenset(t for t, m in RPC_METHOD.items() if m == method)
    for method in set(RPC_METHOD.values())
}


class RaftService:
    """The receiving side: implements raftRpc for an ``RpcProvider``. Each
    method answers with a ``Promise`` (``returns_future``): no coroutine or
    Task per message on the replication path, and the reply is written the
    moment the node settles its response (after its fsync)."""

    def __init__(
        self, node_id: int, handler: Callable[[Message], Promise[Message | None]],
        receiver: SnapshotReceiver | None = None,
    ) -> None:
        """``receiver`` takes streamed snapshot files (a state machine whose
        snapshots are files); a SNAPSHOT message for a file it does not hold
        is then ignored, so the core never installs a snapshot whose state
        is missing (raft/snapshot_stream.py)."""
        self._id = node_id
        self._handler = handler
        self._receiver = receiver

    def _handle(self, method: str, request: raft_pb2.RaftMessage) -> Promise[raft_pb2.RaftReply]:
        try:
            msg = message_from_pb(request)
        except ValueError as exc:
            raise RpcError(Status.BAD_REQUEST, f"bad raft message: {exc}") from None
        if msg.type not in _ALLOWED[method] or msg.dst != self._id:
            raise RpcError(
                Status.BAD_REQUEST,
                f"{method} cannot carry {msg.type.name} for node {msg.dst} (this is {self._id})"
            )
        reply: Promise[raft_pb2.RaftReply] = Promise()
        if (msg.type is MessageType.SNAPSHOT and self._receiver is not None
                and msg.snapshot is not None and not self._receiver.has(msg.snapshot)):
            reply.set_result(raft_pb2.RaftReply())
            return reply
        response = self._handler(msg)
        response.add_done_callback(partial(_settle, reply))
        return reply

    @returns_future
    def AppendEntries(self, request: raft_pb2.RaftMessage) -> Promise[raft_pb2.RaftReply]:
        return self._handle("AppendEntries", request)

    @returns_future
    def RequestVote(self, request: raft_pb2.RaftMessage) -> Promise[raft_pb2.RaftReply]:
        return self._handle("RequestVote", request)

    @returns_future
    def InstallSnapshot(
        self, request: raft_pb2.RaftMessage
    ) -> Promise[raft_pb2.RaftReply]:
        return self._handle("InstallSnapshot", request)

    async def StreamSnapshot(
        self, request: raft_pb2.SnapshotChunk
    ) -> raft_pb2.SnapshotChunkReply:
        if request.dst != self._id:
            raise RpcError(Status.BAD_REQUEST,
                           f"snapshot chunk for node {request.dst} (this is {self._id})")
        if self._receiver is None:
            return raft_pb2.SnapshotChunkReply(error="this node takes no snapshot files")
        return await self._receiver.chunk(request)

    @returns_future
    def TimeoutNow(self, request: raft_pb2.RaftMessage) -> Promise[raft_pb2.RaftReply]:
        return self._handle("TimeoutNow", request)


def _settle(reply: Promise[raft_pb2.RaftReply], response: Promise[Message | None]) -> None:
    """Answer the call with the node's response (zero or one message)."""
    if reply.done():
        return  # the call was given up (deadline, connection lost)
    if response.cancelled():
        reply.cancel()
        return
    exc = response.exception()
    if exc is not None:
        reply.set_exception(exc)
        return
    out = raft_pb2.RaftReply()
    msg = response.result()
    if msg is not None:
        out.messages.append(message_to_pb(msg))
    reply.set_result(out)


class RpcTransport:
    """The sending side: one channel per peer, replies stepped into the node."""

    def __init__(
        self,
        node_id: int,
        peers: Mapping[int, tuple[str, int]],
        *,
        deliver: Callable[[Message], None],
        unreachable: Callable[[int], None] | None = None,
        timeout: float = 2.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        retire_grace: float = 10.0,
    ) -> None:
        """``peers``: {id: (host, port)} to start with (this node's own id
        is skipped); ``set_peers`` replaces it later. ``retire_grace``:
        seconds a removed peer's channel stays open (see ``set_peers``)."""
        self._id = node_id
        self._max_frame_size = max_frame_size
        self._channels: dict[int, RpcChannel] = {}
        self._addresses: dict[int, tuple[str, int]] = {}
        #: Channels of peers no longer in the membership, kept for
        #: ``retire_grace`` seconds: (channel, address, timer).
        self._retired: dict[int, tuple[RpcChannel, tuple[str, int], asyncio.TimerHandle]] = {}
        self.retire_grace = retire_grace
        self._deliver = deliver
        self._unreachable = unreachable
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        #: Closes of channels that were replaced or retired.
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._down: set[int] = set()
        self._last_packed: tuple[Entry | None, Entry | None, int, bytes] = (None, None, 0, b"")
        #: Streams state machine files ahead of SNAPSHOT messages (None:
        #: snapshots are bytes, carried by the core's own chunks).
        self.snapshot_sender: SnapshotSender | None = None
        self._new_channels(peers)

    @property
    def peers(self) -> dict[int, tuple[str, int]]:
        """The current peers: {id: (host, port)}, retired ones not included."""
        return dict(self._addresses)

    def set_peers(self, peers: Mapping[int, tuple[str, int]]) -> None:
        """Make ``peers`` ({id: (host, port)}; this node's own id is
        skipped) the nodes messages go to. A new peer gets a channel (it
        connects on its first message); a peer whose address changed gets
        a new one (the old is closed). A peer that left keeps its channel
        for ``retire_grace`` seconds: the core still sends a removed
        member the commit of its removal (``RaftCore._forget_removed``),
        which is how it learns to stop campaigning."""
        if self._closed:
            return
        wanted = {p: a for p, a in peers.items() if p != self._id}
        for peer in [p for p in self._addresses if p not in wanted]:
            address = self._addresses.pop(peer)
            channel = self._channels.pop(peer)
            self._down.discard(peer)
            timer = asyncio.get_running_loop().call_later(
                self.retire_grace, self._close_retired, peer, channel)
            self._retired[peer] = (channel, address, timer)
            log.info("node %d: peer %d (%s:%d) left the membership", self._id, peer, *address)
        changed = {p: a for p, a in wanted.items() if self._addresses.get(p) != a}
        for peer, address in list(changed.items()):
            old = self._channels.pop(peer, None)
            if old is not None:
                log.info("node %d: peer %d moved from %s:%d to %s:%d", self._id, peer,
                         *self._addresses[peer], *address)
                self._close_channel(old)
            retired = self._retired.pop(peer, None)
            if retired is not None:
                channel, was, timer = retired
                timer.cancel()
                if was == address:  # back before its channel was closed
                    self._channels[peer], self._addresses[peer] = channel, address
                    del changed[peer]
                else:
                    self._close_channel(channel)
        self._new_channels(changed)

    def _new_channels(self, peers: Mapping[int, tuple[str, int]]) -> None:
        for peer, (host, port) in peers.items():
            if peer == self._id:
                continue
            self._channels[peer] = RpcChannel(host, port, backoff_initial=0.02,
                                              backoff_max=0.5,
                                              max_frame_size=self._max_frame_size)
            self._addresses[peer] = (host, port)
            log.debug("node %d: peer %d at %s:%d", self._id, peer, host, port)

    def _close_retired(self, peer: int, channel: RpcChannel) -> None:
        retired = self._retired.get(peer)
        if retired is not None and retired[0] is channel:
            del self._retired[peer]
            self._close_channel(channel)

    def _close_channel(self, channel: RpcChannel) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _channel(self, peer: int) -> RpcChannel | None:
        channel = self._channels.get(peer)
        if channel is None and peer in self._retired:
            return self._retired[peer][0]
        return channel

    def send(self, msg: Message) -> None:
        if self._closed:
            return
        if msg.type is MessageType.SNAPSHOT and self.snapshot_sender is not None:
            self.snapshot_sender.send(msg)  # it calls send_now once the file is there
            return
        self.send_now(msg)

    async def stream_call(
        self, peer: int, chunk: raft_pb2.SnapshotChunk
    ) -> raft_pb2.SnapshotChunkReply:
        """One StreamSnapshot call to ``peer`` (raises ``RpcError``)."""
        channel = self._channel(peer)
        if channel is None:
            raise RpcError(Status.UNAVAILABLE, f"unknown peer {peer}")
        return await channel.call(_SERVICE_NAME, "StreamSnapshot", chunk,
                                  raft_pb2.SnapshotChunkReply, timeout=max(self._timeout, 30.0))

    def send_now(self, msg: Message) -> None:
        """Send ``msg`` on its RPC call (no snapshot streaming first)."""
        if self._closed:
            return
        channel = self._channel(msg.dst)
        if channel is None:
            log.warning("node %d: message for unknown peer %d dropped", self._id, msg.dst)
            return
        method = RPC_METHOD[msg.type]
        try:
            request = message_to_pb(msg, self._packed(msg.entries) if msg.entries else None)
            # Fast path, connected: no coroutine, no Task, the reply handled
            # in a callback. Otherwise a Task that connects first.
            # A Promise: the reply is stepped into the node as soon as it is
            # read, not a loop iteration later.
            future = channel.start_call(
                _SERVICE_NAME, method, request, timeout=self._timeout, promise=True
            )
        except Exception as exc:  # e.g. LocalProtocolError: a frame over the limit
            # One message that cannot be sent must not stop the node: Raft
            # treats it as lost and sends again (a probe, the next heartbeat).
            # The request limits (kvserver/limits.py) keep every entry small
            # enough that this is a bug, not a load, hence the error level.
            log.error("node %d: %s to %d (%d entries) dropped: %s", self._id, method,
                      msg.dst, len(msg.entries), exc)
            return
        if future is not None:
            future.add_done_callback(partial(self._on_reply, msg))
            return
        task = asyncio.get_running_loop().create_task(
            self._call(channel, method, msg, request)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def flush(self) -> None:
        for channel in self._channels.values():
            channel.flush()

    def _packed(self, entries: tuple[Entry, ...]) -> bytes:
        """``pack_entries``, remembered for the last slice: a leader sends the
        same entries to each follower. Entries are immutable and a log slice
        is identified by its first and last entry objects and its length
        (the cache holds them, so their ids cannot be reused)."""
        first, last, count, blob = self._last_packed
        if entries[0] is first and entries[-1] is last and len(entries) == count:
            return blob
        blob = pack_entries(entries)
        self._last_packed = (entries[0], entries[-1], len(entries), blob)
        return blob

    async def _call(
        self, channel: RpcChannel, method: str, msg: Message, request: raft_pb2.RaftMessage
    ) -> None:
        try:
            reply = await channel.call(
                _SERVICE_NAME, method, request, raft_pb2.RaftReply, timeout=self._timeout
            )
        except RpcError as exc:
            self._failed(msg, exc)
            return
        except asyncio.CancelledError:
            return
        self._delivered(msg, reply)

    def _on_reply(self, msg: Message, future: Promise[bytes]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, RpcError):
                self._failed(msg, exc)
            else:
                log.error("node %d: send to %d failed: %r", self._id, msg.dst, exc)
            return
        try:
            reply = parse_response(raft_pb2.RaftReply, future.result())
        except RpcError as bad:
            log.warning("node %d: bad reply from peer %d: %s", self._id, msg.dst, bad.message)
            return
        self._delivered(msg, reply)

    def _failed(self, msg: Message, exc: RpcError) -> None:
        if msg.dst not in self._down:
            self._down.add(msg.dst)
            log.info("node %d: peer %d unreachable: %s", self._id, msg.dst, exc)
        if self._unreachable is not None and not self._closed:
            self._unreachable(msg.dst)

    def _delivered(self, msg: Message, reply: raft_pb2.RaftReply) -> None:
        if msg.dst in self._down:
            self._down.discard(msg.dst)
            log.info("node %d: peer %d reachable again", self._id, msg.dst)
        if self._closed:
            return
        for pb in reply.messages:
            try:
                response = message_from_pb(pb)
            except ValueError as exc:
                log.warning("node %d: bad reply from peer %d: %s", self._id, msg.dst, exc)
                continue
            if response.src != msg.dst:
                log.warning("node %d: reply from %d claims to be from %d; dropped",
                            self._id, msg.dst, response.src)
                continue
            self._deliver(response)

    async def close(self) -> None:
        if self.snapshot_sender is not None:
            await self.snapshot_sender.close()
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, _, timer in self._retired.values():
            timer.cancel()
        retired = [channel for channel, _, _ in self._retired.values()]
        self._retired.clear()
        # The closes of replaced channels already under way are let finish.
        await asyncio.gather(*self._closing, *(ch.close() for ch in [*self._channels.values(),
                                                                      *retired]),
                             return_exceptions=True)
