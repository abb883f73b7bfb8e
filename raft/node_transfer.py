"""Waiting for a leadership transfer to finish (dissertation 3.10), for
``RaftNode.transfer_leadership``: the core hands leadership over on its
own; this keeps the callers' futures and settles them from what the core
shows after each tick and role change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from raft.core import NotLeader, RaftCore
from raft.types import NONE, Role

__all__ = ["TransferWaiters", "best_transfer_target"]


def best_transfer_target(core: RaftCore) -> int:
    """The follower to hand leadership to: the most up-to-date voter
    (highest match index) among those heard from recently, so its
    TIMEOUT_NOW is sent at once and its election cannot be refused for an
    old log. ``NONE`` if there is no other voter. Leader only."""
    st = core.status()
    candidates = [(pr.recent_active, pr.match, -p) for p, pr in st.progress.items()
                  if p != core.id]
    if not candidates:
        return NONE
    return -max(candidates)[2]


class TransferWaiters:
    """Futures of transfers under way: (target, future of the new leader)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, asyncio.Future[int]]] = []

    async def transfer(self, core: RaftCore, to: int | None, timeout: float,
                       wake: Callable[[], None],
                       log: logging.LoggerAdapter[logging.Logger]) -> int:
        """``RaftNode.transfer_leadership``: start the core's transfer to
        ``to`` (None: ``best_transfer_target``), call ``wake`` (the drain
        sends the core's messages), and wait for another node to lead."""
        if core.role is not Role.LEADER:
            raise NotLeader(core.leader)
        if to is None:
            to = best_transfer_target(core)
            if to == NONE:
                raise ValueError("no other voter to transfer leadership to")
        if to == core.id:
            return core.id
        if to not in core.peers:
            raise ValueError(f"node {to} is not a voter")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.add(to, future)
        log.info("node %d transferring leadership to node %d (term %d, its match %d of %d)",
                 core.id, to, core.term, core.progress[to].match, core.log.last_index())
        core.transfer_leader(to)
        wake()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"leadership transfer to node {to} did not finish "
                               f"within {timeout:g} s") from None
        finally:
            self.discard(future)

    def add(self, to: int, future: asyncio.Future[int]) -> None:
        self._waiting.append((to, future))

    def discard(self, future: asyncio.Future[int]) -> None:
        self._waiting = [t for t in self._waiting if t[1] is not future]

    def settle(self, core: RaftCore) -> None:
        """After a tick or a role change: done once another node leads,
        failed once the core gave the transfer up (it keeps leading with no
        transferee: the election timeout passed)."""
        if not self._waiting:
            return
        if core.role is Role.LEADER:
            if core.lead_transferee != NONE:
                return
            self.fail_all(TimeoutError("leadership transfer aborted after an election timeout"))
        elif core.leader not in (NONE, core.id):
            # Stepping down (the target's vote request) comes first, with no
            # leader known; done when the new leader's first append arrives.
            waiting, self._waiting = self._waiting, []
            for _, future in waiting:
                if not future.done():
                    future.set_result(core.leader)

    def unreachable(self, peer: int) -> None:
        """The transport could not reach ``peer``: its TIMEOUT_NOW (or the
        append before it) may be lost and the core does not resend it;
        waiting out the election timeout would only delay a caller who can
        pick another target."""
        error = TimeoutError(f"leadership transfer target {peer} is unreachable")
        for to, future in self._waiting:
            if to == peer and not future.done():
                future.set_exception(error)
        self._waiting = [t for t in self._waiting if t[0] != peer]

    def fail_all(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, []
        for _, future in waiting:
            if not future.done():
                future.set_exception(exc)
