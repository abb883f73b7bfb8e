"""The KV client: ``AsyncClerk`` (asyncio) and ``Clerk`` (blocking).

The API (``Clerk``'s methods; ``AsyncClerk``'s are the same coroutines):

* keys and values are ``bytes`` on the wire and in the store; every method
  takes ``str`` (encoded as UTF-8) or ``bytes`` for them;
* ``get(key, default=b"") -> bytes``: the value, or ``default`` (returned
  as given, e.g. ``None``) when the key is absent;
* ``put``, ``append``, ``delete`` -> None;
* ``cas(key, expected, new) -> bool``: sets ``new`` if the key holds
  ``expected`` (``None``: if the key is absent), as one write applied at
  most once; True when it swapped. An existing empty value is not absent:
  ``get(key, None)`` tells them apart;
* ``scan(start=b"", end=None, limit=None) -> ScanResult`` and
  ``scan_prefix(prefix, limit=None) -> ScanResult``: ``[(key, value), ...]``
  (bytes) in key order, at most ``limit`` pairs (None: all), fetched a page
  at a time; ``.more`` / ``.next_start`` say where to continue when
  ``limit`` cut the range short. Each page is linearizable, the whole scan
  is not one snapshot: writes between pages show in the later pages.

What a clerk does for the caller:

* finds the leader and remembers it; follows WRONG_LEADER hints; tries the
  next server when one is unreachable or has no idea who leads;
* numbers its writes (``client_id``, ``seq``) and retries a write with the
  *same* numbers after a timeout or a leader change, so the cluster applies
  it at most once, and tells the servers the lowest seq whose reply it has
  not seen (``ack_seq``) so they can forget older replies;
* gives up after ``timeout`` seconds for the whole operation with
  ``ClerkTimeout``; the write may or may not have happened then;
* discovers the cluster: it asks any server it can reach for the
  membership (``Membership``: once at its first operation, and again when
  a whole round of its servers failed or a WRONG_LEADER hint names a node
  it has no address for, at most every ``DISCOVERY_INTERVAL`` seconds)
  and from then on tries the members it was told of. So a server list
  (config file) that names removed nodes works while one listed member is
  reachable, and a member added later is found;
* never retries what cannot succeed: a request the cluster refuses as sent
  raises ``BadRequest`` (a field it cannot honour) or ``TooLarge`` (a key,
  value or request over a limit, named in the message; see
  ``kvserver.limits``), and a call the server failed to handle raises
  ``ServerError``. All three are ``RequestRefused``; a refused write was
  not applied, except after ``ServerError``, when it may have been.

Membership (one server at a time, Raft dissertation chapter 4):
``member_list() -> list[Member]`` (the leader's view, with match
indexes), ``member_add(id, "host:port")`` (as a learner),
``member_promote(id)`` (refused with ``BadRequest`` while the learner has
under 90% of the leader's log), ``member_remove(id)``; each change returns
the membership it made. A change the leader cannot take yet (the previous
one is not committed) is retried until ``timeout``; a retried change that
turns out to have happened already (its first reply was lost) counts as
done.

Many operations of one ``AsyncClerk`` may be in flight at once; all share one
connection per server. An operation issued while none of the clerk's others
is outstanding goes out at once as its own ``Get``/``PutAppend`` call; ones
issued while others are in flight are coalesced, per event-loop iteration,
into ``Batch`` calls of up to ``MAX_BATCH`` operations and ``MAX_BATCH_BYTES``
(each still one Raft entry per write, with its own seq, and its own reply).
This costs the coroutines nothing (they were going to wait anyway) and
saves the frame, the dispatch and the reply per operation on the leader
and here. A batch that cannot be sent or answered as a whole (a frame over
the size limit) is sent again operation by operation.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias, TypeVar, overload

from kvserver import kv_pb2
from kvserver.config import load_config
from raft.membership import parse_address
from rpc import LocalProtocolError, RpcChannel, RpcError, Status, parse_response

__all__ = [
    "DISCOVERY_INTERVAL",
    "MAX_BATCH",
    "AsyncClerk",
    "BadRequest",
    "Clerk",
    "ClerkError",
    "ClerkTimeout",
    "Data",
    "Member",
    "NoSpace",
    "RequestRefused",
    "ScanResult",
    "ServerError",
    "TooLarge",
    "prefix_end",
]

_SERVICE_NAME = kv_pb2.DESCRIPTOR.services_by_name["KvServer"].full_name
_REPLY_TYPES: dict[str, Any] = {"Get": kv_pb2.GetReply, "PutAppend": kv_pb2.PutAppendReply,
                                "Scan": kv_pb2.ScanReply, "Membership": kv_pb2.MembershipReply,
                                "ChangeMembership": kv_pb2.MemberChangeReply}
#: The methods a ``Batch`` call can carry (a Scan always goes alone).
_BATCHABLE = frozenset({"Get", "PutAppend"})

#: A key or value as the clerk takes it: text (sent as UTF-8) or bytes.
Data: TypeAlias = str | bytes

_T = TypeVar("_T")

#: Most operations per ``Batch`` call: a bigger batch saves a little more per
#: operation but keeps the cluster's stages (client, leader, followers' disks)
#: in lockstep; two batches in flight overlap.
MAX_BATCH = 64

#: Most bytes of requests per ``Batch`` call (a lone larger one goes alone).
MAX_BATCH_BYTES = 1 << 20

#: Least seconds between two membership discoveries of one clerk: bounds
#: the extra calls while the cluster is down or electing.
DISCOVERY_INTERVAL = 0.25

#: An operation waiting for its batch: (method, request, future of its reply,
#: request size in bytes).
_Queued = tuple[str, Any, "asyncio.Future[Any]", int]


class ClerkError(Exception):
    """Base of the clerk's errors."""


class ClerkTimeout(ClerkError, TimeoutError):
    """The operation did not complete within the clerk's timeout. A write may
    or may not have been applied."""


class RequestRefused(ClerkError):
    """The cluster refused the operation as sent; the same request can never
    succeed, so it is not retried. The message says why. ``retried``: an
    earlier try of the same request got no definite answer (a TIMEOUT, a
    call lost after it may have been sent), so it may have taken effect
    then; a refusal like "already a learner" may be that earlier try's
    doing."""

    retried: bool = False


class BadRequest(RequestRefused, ValueError):
    """A field the server cannot honour (kv.proto ``BAD_REQUEST``). Not applied."""


class TooLarge(RequestRefused, ValueError):
    """A key, value or request over a limit (kv.proto ``TOO_LARGE``, or a
    frame over the RPC frame limit); the message names the limit. Not applied."""


class NoSpace(RequestRefused):
    """The store reached its quota (kv.proto ``NO_SPACE``, ``kvserver
    --max-db-bytes``): a write other than a delete was refused, not applied.
    Reads and deletes still work; the write may succeed once keys are
    deleted."""


class ServerError(RequestRefused):
    """The server failed to handle the call (RPC ``HANDLER_ERROR``,
    ``BAD_REQUEST``, ``UNKNOWN_SERVICE`` or ``UNKNOWN_METHOD``): a bug or a
    server that is not a KV node. A write may or may not have been applied."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the cluster, as ``member_list`` reports it."""

    id: int
    address: str  #: "host:port"
    role: str  #: "voter" or "learner"
    #: The leader's match index for it (how much of the log it holds).
    match_index: int
    #: The cluster has heard from it (kv.proto ``Member.seen``).
    seen: bool

    @classmethod
    def from_pb(cls, pb: kv_pb2.Member) -> Member:
        return cls(pb.id, pb.address, "learner" if pb.role == kv_pb2.LEARNER else "voter",
                   pb.match_index, pb.seen)


def _change_done(request: kv_pb2.MemberChangeRequest, members: list[Member]) -> bool:
    """Whether ``members`` already shows what ``request`` asked for."""
    member = next((m for m in members if m.id == request.id), None)
    if request.op == kv_pb2.ADD_LEARNER:
        return member is not None and member.address == request.address
    if request.op == kv_pb2.PROMOTE:
        return member is not None and member.role == "voter"
    return member is None


class ScanResult(list[tuple[bytes, bytes]]):
    """What ``scan`` returns: a list of ``(key, value)`` in key order, plus
    ``next_start``, the key to scan from to go on (None when the range is
    done; set only when ``limit`` stopped the scan)."""

    __slots__ = ("next_start",)

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]] = (),
                 next_start: bytes | None = None) -> None:
        super().__init__(pairs)
        self.next_start = next_start

    @property
    def more(self) -> bool:
        """Whether the range holds pairs after these."""
        return self.next_start is not None

    def __repr__(self) -> str:
        return f"ScanResult({list.__repr__(self)}, next_start={self.next_start!r})"


def _bytes(data: Data, what: str) -> bytes:
    """``data`` as bytes: text is encoded as UTF-8 (a lone surrogate, which
    UTF-8 cannot encode, raises ``UnicodeEncodeError``, a ValueError)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be str or bytes, not {type(data).__name__}")


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with ``prefix`` (the
    exclusive end of a prefix scan): the prefix without its trailing 0xff
    bytes, last byte plus one. None (no bound) when there is no such key:
    an empty prefix or one of 0xff bytes only."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


#: RPC statuses that retrying the same call cannot change.
_DETERMINISTIC = frozenset({Status.HANDLER_ERROR, Status.BAD_REQUEST,
                            Status.UNKNOWN_SERVICE, Status.UNKNOWN_METHOD})
#: KV error codes that end an operation with an exception, and which.
_REFUSALS: dict[int, type[RequestRefused]] = {
    kv_pb2.BAD_REQUEST: BadRequest,
    kv_pb2.TOO_LARGE: TooLarge,
    kv_pb2.NO_SPACE: NoSpace,
}


def _maybe_delivered(exc: RpcError) -> bool:
    """Whether a call that failed with ``exc`` may have reached the server
    (anything but a connection that could not be made)."""
    return not (exc.status is Status.UNAVAILABLE
                and ("cannot reach" in exc.message or "channel is closed" in exc.message))


def _verdict(reply: Any) -> tuple[kv_pb2.ErrorCode.ValueType, int]:
    """(error code, leader hint) of a reply. A ``Membership`` reply is
    wanted from the leader (its match indexes): from another node it
    counts as WRONG_LEADER with the leader it names."""
    if isinstance(reply, kv_pb2.MembershipReply):
        if reply.err == kv_pb2.OK and reply.leader != reply.id:
            return kv_pb2.WRONG_LEADER, reply.leader
        return reply.err, reply.leader
    return reply.err, reply.leader_hint


class AsyncClerk:
    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        *,
        timeout: float = 10.0,
        rpc_timeout: float = 1.0,
        client_id: int | None = None,
    ) -> None:
        if not servers:
            raise ValueError("AsyncClerk needs at least one server address")
        self.servers: list[tuple[str, int]] = []
        self.timeout = timeout
        self.rpc_timeout = rpc_timeout
        self.client_id = client_id if client_id is not None else random.getrandbits(63) + 1
        # Per server (by position in ``servers``, which discovery extends):
        # its channel; operations outstanding (sent, queued or connecting)
        # and those queued for the next Batch call; False once it answered
        # that it has no Batch method (an older version): from then on
        # every operation goes alone to it.
        self._channels: list[RpcChannel] = []
        self._outstanding: list[int] = []
        self._queued: list[list[_Queued]] = []
        self._batches: list[bool] = []
        self._leader = 0
        # Node id -> position in ``servers`` (the config's ids are its
        # positions until discovery says otherwise), and the positions
        # tried in turn: the members last discovered, then the servers we
        # were given (the members' addresses in the log are the peers'
        # view; behind NAT a client may reach them only at its own).
        self._ids = {i: self._add_server(h, int(p)) for i, (h, p) in enumerate(servers)}
        self._given = sorted(set(self._ids.values()))
        self._rotation = list(self._given)
        self._discovery: asyncio.Task[None] | None = None
        self._discovered_at: float | None = None
        self._next_seq = 1
        # Seqs whose reply we have not seen; a dict keeps insertion order and
        # seqs are inserted increasing, so the first key is the lowest.
        self._unacked: dict[int, None] = {}

    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> AsyncClerk:
        """Servers from a cluster config file (raises ``ConfigError``)."""
        return cls(load_config(path).addresses, **kwargs)

    # -- the API -------------------------------------------------------------

    @overload
    async def get(self, key: Data) -> bytes: ...

    @overload
    async def get(self, key: Data, default: _T) -> bytes | _T: ...

    async def get(self, key: Data, default: object = b"") -> object:
        """The value of ``key`` (bytes), linearizable; ``default`` (as
        given, ``b""`` unless said otherwise) when the key is absent."""
        request = kv_pb2.GetRequest(key=_bytes(key, "key"), client_id=self.client_id)
        reply = await self._until_done("Get", request)
        if reply.err == kv_pb2.NO_KEY:
            return default
        value: bytes = reply.value
        return value

    async def put(self, key: Data, value: Data) -> None:
        """Set ``key`` to ``value``."""
        await self._write(kv_pb2.PUT, key, value)

    async def append(self, key: Data, value: Data) -> None:
        """Append ``value`` to ``key``'s value (a missing key starts empty)."""
        await self._write(kv_pb2.APPEND, key, value)

    async def delete(self, key: Data) -> None:
        """Remove ``key`` (nothing happens if it is absent)."""
        await self._write(kv_pb2.DELETE, key, b"")

    async def cas(self, key: Data, expected: Data | None, new: Data) -> bool:
        """Compare-and-set: set ``key`` to ``new`` if its value is
        ``expected`` (``None``: if ``key`` is absent; an empty value is not
        absent). One write, applied atomically and at most once, like
        ``put``; True when it swapped, False when the key held something
        else (then nothing changed). A retry after a lost reply gets the
        answer of the one time it was applied."""
        reply = await self._write(kv_pb2.CAS, key, new,
                                  None if expected is None else _bytes(expected, "expected"))
        return bool(reply.swapped)

    async def scan(self, start: Data = b"", end: Data | None = None,
                   limit: int | None = None) -> ScanResult:
        """The pairs with ``start <= key < end`` (bytewise; ``end`` None: no
        upper bound) in key order, at most ``limit`` of them (None: all).
        Pages of the server's size are fetched one after the other, each a
        linearizable read on its own (a write between two pages shows in
        the later one). When ``limit`` stops it early, ``.next_start`` (the
        first key not returned; ``.more`` is True) is where to go on:
        ``scan(result.next_start, end, limit)``."""
        cursor = _bytes(start, "start")
        stop = None if end is None else _bytes(end, "end")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1 (or None: no limit), not {limit}")
        result = ScanResult()
        if stop == b"":
            return result  # no key is below b""
        while True:
            want = 0 if limit is None else min(limit - len(result), 0xFFFFFFFF)
            request = kv_pb2.ScanRequest(start=cursor, end=stop or b"", limit=want,
                                         client_id=self.client_id)
            reply = await self._until_done("Scan", request)
            result.extend((pair.key, pair.value) for pair in reply.pairs)
            if limit is not None and len(result) > limit:  # a page longer than asked
                result.next_start = result[limit][0]
                del result[limit:]
                return result
            if not reply.more:
                return result
            if reply.next_start <= cursor:
                raise ServerError(f"Scan reply does not move on from {cursor!r}")
            cursor = reply.next_start
            if limit is not None and len(result) >= limit:
                result.next_start = cursor
                return result

    async def scan_prefix(self, prefix: Data, limit: int | None = None) -> ScanResult:
        """The pairs whose key starts with ``prefix``, as ``scan``."""
        start = _bytes(prefix, "prefix")
        return await self.scan(start, prefix_end(start), limit)

    async def member_list(self) -> list[Member]:
        """The members by id, as the leader sees them (match indexes are
        the leader's)."""
        reply = await self._until_done("Membership", kv_pb2.MembershipRequest())
        self._adopt_members(reply.members)
        return [Member.from_pb(m) for m in reply.members]

    async def member_add(self, node: int, address: str) -> list[Member]:
        """Add node ``node`` at ``address`` ("host:port") as a learner: it
        receives the log (or a snapshot) but does not vote; promote it once
        it has caught up. Raises ``BadRequest`` (a bad id or address, an id
        or address in use) and the usual errors."""
        return await self._change(kv_pb2.MemberChangeRequest(
            op=kv_pb2.ADD_LEARNER, id=node, address=address))

    async def member_promote(self, node: int) -> list[Member]:
        """Make learner ``node`` a voter. Raises ``BadRequest`` while it has
        under 90% of the leader's log (the message gives the numbers)."""
        return await self._change(kv_pb2.MemberChangeRequest(op=kv_pb2.PROMOTE, id=node))

    async def member_remove(self, node: int) -> list[Member]:
        """Remove ``node`` (voter or learner; the leader too: it hands
        leadership over first). The removed node stops once it learns its
        removal is committed."""
        return await self._change(kv_pb2.MemberChangeRequest(op=kv_pb2.REMOVE, id=node))

    async def _change(self, request: kv_pb2.MemberChangeRequest) -> list[Member]:
        try:
            reply = await self._until_done("ChangeMembership", request)
        except BadRequest as exc:
            # "already a learner", "not a member": after a lost reply, the
            # first try may have done it.
            if exc.retried:
                members = await self.member_list()
                if _change_done(request, members):
                    return members
            raise
        self._adopt_members(reply.members)
        return [Member.from_pb(m) for m in reply.members]

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            await asyncio.gather(self._discovery, return_exceptions=True)
        await asyncio.gather(*(ch.close() for ch in self._channels), return_exceptions=True)

    async def __aenter__(self) -> AsyncClerk:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- machinery -------------------------------------------------------------

    async def _write(self, op: int, key: Data, value: Data,
                     expected: bytes | None = None) -> kv_pb2.PutAppendReply:
        request = kv_pb2.PutAppendRequest(
            key=_bytes(key, "key"), value=_bytes(value, "value"), op=op,  # type: ignore[arg-type]
            client_id=self.client_id)
        if expected is not None:
            request.expected = expected
        seq = self._next_seq
        self._next_seq += 1
        self._unacked[seq] = None
        try:
            request.seq = seq
            reply: kv_pb2.PutAppendReply = await self._until_done(
                "PutAppend", request, seq_request=True)
            return reply
        finally:
            # Whatever happened, we will not retry this seq: the server may
            # forget it (a timed-out write stays "may have happened").
            self._unacked.pop(seq, None)

    async def _until_done(self, method: str, request: Any, seq_request: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._discovered_at is None:
            self._discover()
        tried_in_round = 0
        # Whether an earlier try may have taken effect unseen (see
        # ``RequestRefused.retried``).
        unsure = False
        last_problem = "no server answered"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ClerkTimeout(f"{method} timed out after {self.timeout:g} s ({last_problem})")
            if seq_request:
                request.ack_seq = next(iter(self._unacked), self._next_seq)
            server = self._leader
            rpc_timeout = min(self.rpc_timeout, remaining)
            try:
                reply = await self._call(server, method, request, rpc_timeout)
            except LocalProtocolError as exc:  # could not even be sent
                raise TooLarge(f"{method} does not fit in an RPC frame: {exc}") from None
            except RpcError as exc:
                if exc.status in _DETERMINISTIC:
                    raise ServerError(f"{method} at server {server}: {exc}") from None
                last_problem = f"server {server}: {exc}"
                unsure = unsure or _maybe_delivered(exc)
                self._leader = self._next_server(server)
            else:
                err, hint = _verdict(reply)
                if err in (kv_pb2.OK, kv_pb2.NO_KEY):
                    return reply
                refused = _REFUSALS.get(err)
                if refused is not None:
                    error = refused(f"{method} refused: {reply.error}")
                    error.retried = unsure
                    raise error
                last_problem = f"server {server}: {kv_pb2.ErrorCode.Name(err)}"
                if getattr(reply, "error", ""):
                    last_problem += f" ({reply.error})"
                if err == kv_pb2.WRONG_LEADER:
                    hinted = self._ids.get(hint)
                    if hinted is not None and hinted != server:
                        self._leader = hinted
                        continue  # a fresh hint is worth following at once
                    if hint >= 0 and hinted is None:
                        self._discover()  # a leader we have no address for
                    self._leader = self._next_server(server)
                elif err == kv_pb2.SHUTTING_DOWN:
                    self._leader = self._next_server(server)
                else:  # TIMEOUT: the same server may still be leader; retry it.
                    unsure = True
            tried_in_round += 1
            if tried_in_round >= len(self._rotation):
                # A full round without success: likely an election, or
                # servers that left. Ask again who is in the cluster, and
                # pause briefly instead of spinning.
                tried_in_round = 0
                self._discover()
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))

    # -- discovery -------------------------------------------------------------

    def _add_server(self, host: str, port: int) -> int:
        """The position of the server at (host, port), added if new."""
        for position, (h, p) in enumerate(self.servers):
            if (h, p) == (host, port):
                return position
        self.servers.append((host, port))
        self._channels.append(RpcChannel(host, port, backoff_initial=0.02, backoff_max=0.5))
        self._outstanding.append(0)
        self._queued.append([])
        self._batches.append(True)
        return len(self._channels) - 1

    def _next_server(self, server: int) -> int:
        """The server to try after ``server``: the next in the rotation."""
        rotation = self._rotation
        if server in rotation:
            return rotation[(rotation.index(server) + 1) % len(rotation)]
        return rotation[0]

    def _adopt_members(self, members: Iterable[kv_pb2.Member]) -> None:
        """Try these members first from now on (servers for new addresses)."""
        ids: dict[int, int] = {}
        for member in members:
            try:
                host, port = parse_address(member.address)
            except ValueError:
                continue  # a member whose address is not known
            ids[member.id] = self._add_server(host, port)
        if ids:
            self._ids = ids
            found = sorted(set(ids.values()))
            self._rotation = found + [p for p in self._given if p not in found]

    def _discover(self) -> None:
        """Ask for the membership in the background, unless a discovery is
        under way or the last one started under ``DISCOVERY_INTERVAL`` ago."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if (self._discovery is not None and not self._discovery.done()) or (
                self._discovered_at is not None
                and now - self._discovered_at < DISCOVERY_INTERVAL):
            return
        self._discovered_at = now
        self._discovery = loop.create_task(self._ask_membership())

    async def _ask_membership(self) -> None:
        """Ask every known server at once; adopt the leader's answer, else
        the one with the highest commit index."""
        async def ask(server: int) -> kv_pb2.MembershipReply | None:
            try:
                reply: kv_pb2.MembershipReply = await self._call(
                    server, "Membership", kv_pb2.MembershipRequest(), self.rpc_timeout)
            except RpcError:
                return None
            return reply if reply.err == kv_pb2.OK and reply.members else None

        replies = [r for r in await asyncio.gather(*map(ask, range(len(self.servers))))
                   if r is not None]
        if replies:
            best = max(replies, key=lambda r: (r.leader == r.id, r.commit_index))
            self._adopt_members(best.members)

    async def _call(self, server: int, method: str, request: Any, timeout: float) -> Any:
        """One attempt of an operation at ``server``: its reply; raises
        ``RpcError``. Alone, it is sent at once; else it joins a batch
        (unless its time is nearly up: a batch waits ``rpc_timeout``)."""
        outstanding = self._outstanding
        outstanding[server] += 1
        try:
            if ((outstanding[server] > 1 or self._queued[server])
                    and timeout >= self.rpc_timeout and self._batches[server]
                    and method in _BATCHABLE):
                return await self._enqueue(server, method, request)
            # Connected: send now and await the reply's future (no coroutine
            # per call); otherwise the channel's call() connects first.
            channel = self._channels[server]
            reply_type = _REPLY_TYPES[method]
            call = channel.start_call(_SERVICE_NAME, method, request, timeout=timeout)
            if call is None:
                return await channel.call(_SERVICE_NAME, method, request, reply_type,
                                          timeout=timeout)
            return parse_response(reply_type, await call)
        finally:
            outstanding[server] -= 1

    def _enqueue(self, server: int, method: str, request: Any) -> asyncio.Future[Any]:
        """Queue an operation for the next ``Batch`` call to ``server`` (sent
        once the coroutines running in this loop iteration had their turn);
        the future of its reply, or of the error that ended its call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        queue = self._queued[server]
        if not queue:
            loop.call_soon(self._send_queued, server)
        queue.append((method, request, future, request.ByteSize()))
        return future

    def _send_queued(self, server: int) -> None:
        queue = [op for op in self._queued[server] if not op[2].done()]  # skip cancelled
        self._queued[server] = []
        start = 0
        while start < len(queue):
            end = start + 1
            size = queue[start][3]
            while (end < len(queue) and end - start < MAX_BATCH
                   and size + queue[end][3] <= MAX_BATCH_BYTES):
                size += queue[end][3]
                end += 1
            self._send_ops(server, queue[start:end])
            start = end

    def _send_ops(self, server: int, ops: list[_Queued]) -> None:
        """Send ``ops`` in one call: a lone operation as its own method,
        several as a ``Batch``."""
        if len(ops) == 1:
            method, request, _, _ = ops[0]
            body_type = _REPLY_TYPES[method]
        else:
            method = "Batch"
            request = kv_pb2.BatchRequest(
                gets=[r for m, r, _, _ in ops if m == "Get"],
                writes=[r for m, r, _, _ in ops if m == "PutAppend"],
            )
            body_type = kv_pb2.BatchReply
        channel = self._channels[server]
        try:
            call = channel.start_call(_SERVICE_NAME, method, request, timeout=self.rpc_timeout)
        except Exception as exc:  # a frame above the limit: LocalProtocolError
            self._batch_failed(server, ops, exc)
            return
        if call is not None:
            call.add_done_callback(partial(self._settle, server, ops, body_type))
            return
        # (Re)connecting or paused: the channel's call waits for it.
        task = asyncio.ensure_future(
            channel.call(_SERVICE_NAME, method, request, body_type, timeout=self.rpc_timeout)
        )
        task.add_done_callback(partial(self._settle, server, ops, None))

    def _settle(self, server: int, ops: list[_Queued], body_type: type[Any] | None,
                call: asyncio.Future[Any]) -> None:
        """Hand each operation its reply from ``call``'s: a lone
        operation's reply, or its element of a ``BatchReply`` (a whole-batch
        refusal, WRONG_LEADER or SHUTTING_DOWN, is every operation's reply:
        it has the ``err`` and ``leader_hint`` the retry loop looks at).
        ``call`` delivers raw bytes to parse with ``body_type``, or (None) a
        message."""
        try:
            if call.cancelled():
                raise RpcError(Status.UNAVAILABLE, "call cancelled")
            reply = call.result()
            if body_type is not None:
                reply = parse_response(body_type, reply)
            if len(ops) == 1:
                replies = [reply]
            elif reply.err in _REFUSALS:
                # The batch as a whole (its size or count) is over a limit
                # of this server: each operation may still be fine alone.
                self._send_alone(server, ops)
                return
            elif reply.err != kv_pb2.OK:
                replies = [reply] * len(ops)
            else:
                gets, writes = iter(reply.gets), iter(reply.writes)
                replies = [next(gets if m == "Get" else writes, None) for m, _, _, _ in ops]
                if (None in replies or next(gets, None) is not None
                        or next(writes, None) is not None):
                    raise RpcError(Status.HANDLER_ERROR, "Batch reply does not match the request")
        except Exception as exc:
            self._batch_failed(server, ops, exc)
            return
        for (_, _, future, _), one in zip(ops, replies, strict=True):
            if not future.done():
                future.set_result(one)

    def _batch_failed(self, server: int, ops: list[_Queued], exc: Exception) -> None:
        """A call failed: a batch that could not be sent or answered as a
        whole (a frame or reply above the size limit, a reply that does not
        match, a server without ``Batch``) is sent again operation by
        operation, so that each gets its own answer; otherwise the
        operations fail with the call's error (their retry loop decides
        what next)."""
        status = exc.status if isinstance(exc, RpcError) else None
        if len(ops) > 1 and status is Status.UNKNOWN_METHOD:
            self._batches[server] = False  # an older server: no Batch
        whole_batch = isinstance(exc, LocalProtocolError) or status in (
            Status.HANDLER_ERROR, Status.UNKNOWN_METHOD)
        if len(ops) > 1 and whole_batch:
            self._send_alone(server, ops)
            return
        for _, _, future, _ in ops:
            if not future.done():
                # Each operation its own exception object (tracebacks differ).
                future.set_exception(
                    RpcError(exc.status, exc.message) if isinstance(exc, RpcError) else exc)


    def _send_alone(self, server: int, ops: list[_Queued]) -> None:
        """Send each operation of a batch that failed as a whole in its own call."""
        for op in ops:
            if not op[2].done():
                self._send_ops(server, [op])


class Clerk:
    """Blocking twin of ``AsyncClerk`` (runs it on a private event loop).

    Not thread-safe: use one Clerk per thread."""

    def __init__(self, servers: Sequence[tuple[str, int]], **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._async = AsyncClerk(servers, **kwargs)

    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> Clerk:
        return cls(load_config(path).addresses, **kwargs)

    @property
    def client_id(self) -> int:
        return self._async.client_id

    @overload
    def get(self, key: Data) -> bytes: ...

    @overload
    def get(self, key: Data, default: _T) -> bytes | _T: ...

    def get(self, key: Data, default: object = b"") -> object:
        """As ``AsyncClerk.get``: bytes, or ``default`` when absent."""
        return self._runner.run(self._async.get(key, default))

    def put(self, key: Data, value: Data) -> None:
        self._runner.run(self._async.put(key, value))

    def append(self, key: Data, value: Data) -> None:
        self._runner.run(self._async.append(key, value))

    def delete(self, key: Data) -> None:
        self._runner.run(self._async.delete(key))

    def cas(self, key: Data, expected: Data | None, new: Data) -> bool:
        """As ``AsyncClerk.cas``: True when it swapped."""
        return self._runner.run(self._async.cas(key, expected, new))

    def scan(self, start: Data = b"", end: Data | None = None,
             limit: int | None = None) -> ScanResult:
        """As ``AsyncClerk.scan``."""
        return self._runner.run(self._async.scan(start, end, limit))

    def scan_prefix(self, prefix: Data, limit: int | None = None) -> ScanResult:
        """As ``AsyncClerk.scan_prefix``."""
        return self._runner.run(self._async.scan_prefix(prefix, limit))

    def member_list(self) -> list[Member]:
        """As ``AsyncClerk.member_list``."""
        return self._runner.run(self._async.member_list())

    def member_add(self, node: int, address: str) -> list[Member]:
        """As ``AsyncClerk.member_add``."""
        return self._runner.run(self._async.member_add(node, address))

    def member_promote(self, node: int) -> list[Member]:
        """As ``AsyncClerk.member_promote``."""
        return self._runner.run(self._async.member_promote(node))

    def member_remove(self, node: int) -> list[Member]:
        """As ``AsyncClerk.member_remove``."""
        return self._runner.run(self._async.member_remove(node))

    def close(self) -> None:
        try:
            self._runner.run(self._async.close())
        finally:
            self._runner.close()

    def __enter__(self) -> Clerk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
