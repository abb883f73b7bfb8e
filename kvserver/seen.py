""""Seen" marks: the replicated record of which members have held data.

A node started with an empty data dir must learn whether it is a fresh
member (never started: it may bootstrap, it has promised nothing) or one
that lost its disk (it voted and acknowledged entries it no longer has: it
must never vote or ack as that member again, Raft dissertation 3.8 and
issue 15). etcd answers the same question with its "published" members: a
member publishes its attributes through the log once it has started, and
an empty data dir for a published member is refused.

Here the leader marks a member seen once it has acknowledged an entry
(``match > 0`` in the leader's progress: the member wrote it durably and so
holds state it must not forget) by proposing a ``MEMBER_SEEN`` command. The
state machine applies it into its meta, in the same transaction as the
entry, and drops an id when a later configuration entry removes it, so a
re-added id starts unseen. Every member applies the record, so any member,
not just the leader, can tell a wiped node it was seen (``Membership``
RPC, ``Member.seen``).

Residual window: a member wiped between its first acknowledgement and the
commit of its seen mark (one check interval plus a round trip: about a
second) is not recognised, and would bootstrap as the fresh member it
seems to be. Its first acknowledgements were of the leader's first entries
of a term it took part in; this is the same window etcd leaves between a
member's first append and its publish.
"""

from __future__ import annotations

import asyncio
import logging

from kvserver import kv_pb2
from kvserver.state_machine import KvStateMachine
from raft.core import NotLeader, ProposalDropped
from raft.node import LeadershipLost, NodeStopped, RaftNode

__all__ = ["SEEN_CHECK_INTERVAL", "SeenMarker", "unseen_members"]

log = logging.getLogger("kvserver.seen")

#: Seconds between the leader's checks (no busy loop: a check is a dict walk).
SEEN_CHECK_INTERVAL = 1.0


def unseen_members(node: RaftNode, state_machine: KvStateMachine) -> list[int]:
    """On the leader: the members that have acknowledged an entry but are not
    yet marked seen, sorted; empty on a follower. The leader itself counts:
    its own log is not empty once it leads (its first entry of the term)."""
    progress = node.member_progress()
    members = node.membership.members
    seen = state_machine.seen_members
    return sorted(n for n, p in progress.items()
                  if p.match > 0 and n in members and n not in seen)


class SeenMarker:
    """The leader's periodic check; ``run`` until cancelled."""

    def __init__(self, node: RaftNode, state_machine: KvStateMachine,
                 interval: float = SEEN_CHECK_INTERVAL) -> None:
        self._node = node
        self._sm = state_machine
        self.interval = interval

    async def mark_once(self) -> list[int]:
        """Propose a MEMBER_SEEN for the members newly seen; the ids marked
        (empty when none, or when this node does not lead or lost the lead
        before the record committed)."""
        ids = unseen_members(self._node, self._sm)
        if not ids:
            return []
        cmd = kv_pb2.Command(op=kv_pb2.MEMBER_SEEN, member_ids=ids)
        try:
            await asyncio.wait_for(self._node.propose(cmd.SerializeToString()),
                                   timeout=max(self.interval, 2.0))
        except (NotLeader, ProposalDropped, LeadershipLost, NodeStopped, TimeoutError):
            return []  # the next leader's check marks them
        log.info("node %d: members %s marked seen", self._node.id, ids)
        return ids

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._node.is_leader:
                await self.mark_once()
