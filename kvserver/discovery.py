"""Before an empty data dir is used: ask the other members who this node is.

``settle_identity`` polls the members listed in the config with the
``Membership`` RPC (short timeouts, retried with backoff) until the rules
of ``kvserver.identity`` (``decide_bootstrap`` / ``decide_join``) can
decide, then returns the ``Identity`` to write or raises ``IdentityError``.
While a bootstrapping node waits, its own port answers ``Membership`` with
``bootstrapping=true`` (``WaitingService``), so that the members of a new
cluster, all empty, learn from each other that nobody has started yet;
every other method answers SHUTTING_DOWN (a client retries elsewhere).

Known limit: the decision trusts the members that answer. Members that
wait to bootstrap say nothing about a cluster that is down: if every
running member is unreachable and only other empty data dirs answer (two
members wiped at once while the third is down), they bootstrap a new
cluster under the old one's config. The seen marks (kvserver/seen.py)
catch the common case, one wiped member while the others run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from kvserver import kv_pb2
from kvserver.config import ClusterConfig, NodeAddress
from kvserver.identity import Identity, config_membership, decide_bootstrap, decide_join
from kvserver.service import KV_SERVICE
from rpc import RpcChannel, RpcError, RpcProvider, Stub

__all__ = ["WaitingService", "ask_members", "settle_identity"]

log = logging.getLogger("kvserver.discovery")

#: Seconds for one Membership call (connect included): members are on a LAN.
PROBE_TIMEOUT = 1.0
#: Backoff between rounds of calls, seconds (doubling up to the max).
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 1.0
#: Seconds between "waiting for another member" log lines.
WAIT_LOG_INTERVAL = 5.0


class WaitingService:
    """``KvServer`` on a node that waits to bootstrap: ``Membership`` says
    so; every other method refuses with SHUTTING_DOWN (Status: role
    "waiting"), a reply a client retries on another member."""

    def __init__(self, node_id: int, config: ClusterConfig) -> None:
        self._id = node_id
        self._members = [
            kv_pb2.Member(id=n, address=a, role=kv_pb2.VOTER)
            for n, a in config_membership(config).addresses
        ]
        for md in KV_SERVICE.methods:
            if md.name != "Membership":
                setattr(self, md.name, self._refusing(GetMessageClass(md.output_type)))

    async def Membership(self, request: kv_pb2.MembershipRequest) -> kv_pb2.MembershipReply:
        return kv_pb2.MembershipReply(err=kv_pb2.OK, members=self._members, leader=-1,
                                      id=self._id, bootstrapping=True)

    def _refusing(self, reply_type: type[Message]) -> Callable[[Message], Any]:
        fields = reply_type.DESCRIPTOR.fields_by_name

        async def refuse(request: Message) -> Message:
            reply = reply_type()
            if "err" in fields:
                reply.err = kv_pb2.SHUTTING_DOWN  # type: ignore[attr-defined]
            if "leader_hint" in fields:
                reply.leader_hint = -1  # type: ignore[attr-defined]
            if "role" in fields:
                reply.id, reply.role = self._id, "waiting"  # type: ignore[attr-defined]
            return reply

        return refuse


async def _ask(address: NodeAddress, timeout: float) -> kv_pb2.MembershipReply | None:
    try:
        async with RpcChannel(address.host, address.port, connect_timeout=timeout) as channel:
            reply: kv_pb2.MembershipReply = await Stub(channel, KV_SERVICE).Membership(
                kv_pb2.MembershipRequest(), timeout=timeout)
            return reply
    except (RpcError, OSError):
        return None


async def ask_members(contacts: Sequence[NodeAddress],
                      timeout: float = PROBE_TIMEOUT) -> list[kv_pb2.MembershipReply]:
    """One round: the ``Membership`` replies of the contacts that answered."""
    replies = await asyncio.gather(*(_ask(a, timeout) for a in contacts))
    return [r for r in replies if r is not None and r.err == kv_pb2.OK]


async def settle_identity(node_id: int, address: NodeAddress, config: ClusterConfig,
                          *, join: bool) -> Identity:
    """Poll the config's other members until this empty data dir's fate is
    decided: the ``Identity`` to write, or ``IdentityError``. Serves
    ``WaitingService`` on ``address`` meanwhile when bootstrapping (raises
    ``OSError`` if it cannot listen). Waits as long as no member answers:
    a wiped node must not bootstrap alone while its peers are down."""
    contacts = [n for n in config.nodes
                if n.id != node_id and (n.host, n.port) != (address.host, address.port)]
    if not join and not contacts:
        decided = decide_bootstrap(node_id, config, [])
        assert decided is not None
        return decided
    provider: RpcProvider | None = None
    if not join:
        provider = RpcProvider(address.host, address.port)
        provider.register(KV_SERVICE, WaitingService(node_id, config))
        await provider.start()
    try:
        delay = BACKOFF_INITIAL
        last_log = time.monotonic()
        while True:
            replies = await ask_members(contacts)
            if join:
                identity = decide_join(node_id, str(address), config.path, replies)
            else:
                identity = decide_bootstrap(node_id, config, replies)
            if identity is not None:
                return identity
            now = time.monotonic()
            if now - last_log >= WAIT_LOG_INTERVAL:
                last_log = now
                what = "a running member" if join else "another member"
                log.info("node %d: data dir empty; waiting for %s of %s to answer "
                         "(asked %s)", node_id, what, config.path,
                         ", ".join(str(c) for c in contacts))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
    finally:
        if provider is not None:
            await provider.close()
