"""Membership changes while clients run (issue 15): a seeded script that
grows, shrinks and replaces members of a :class:`~tests.nemesis.nemesis.ProxiedCluster`
with the clerk's ``member_*`` calls, and the end-of-run membership checks.

Steps (:data:`STEPS`), one server at a time (Raft dissertation chapter 4):

``grow``
    ``member_add`` a new id at a new port (a learner), start it with
    ``kvserver --id ID --addr 127.0.0.1:PORT --join``, wait until it applied
    the leader's commit index of the moment it started (by snapshot when
    ``--max-raft-state`` is small), then ``member_promote`` it. A promotion
    refused because the learner is behind (the 90% rule) is retried after
    a pause.
``shrink``
    ``member_remove`` a voter (the leader with probability
    ``leader_removal``: it hands leadership over first; else a follower,
    one that joined later if any); only while more than ``min_voters``
    voters are active. The network faults act on the proxied bootstrap
    nodes only, so at least ``min_proxied`` of them are kept (by shrink
    and replace): only one of three is ever removed. The removed process stops by
    itself (exit 0, expected) once it learns of its removal; one that never
    receives the entry (the leader stops replicating to it as soon as the
    change is in its own log, dissertation 4.1) keeps running, and must
    not disrupt the others (4.2.3): it is left running to the end.
``replace``
    kill -9 a follower (a dead disk), ``member_remove`` it, then ``grow``:
    a new node on a new port takes its place.

A plan (``MembershipOptions.plan``) runs once (every step, even after the
run's stop: the scenario waits for it) or cycles until stopped (the step
under way finishes). A change whose reply was lost (``ClerkTimeout``) is
resolved with ``member_list`` and retried; a step that does not finish in
``step_timeout`` seconds, or a refusal that is not "not yet", is an
anomaly and ends the script. Every step is a nemesis event (its time since
the start of the run), so the report's schedule interleaves faults and
membership changes. The seed fixes the plan and the choices (leader or
not, which follower); which node leads is timing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from clerk import AsyncClerk, BadRequest, ClerkTimeout, Member
from tests.nemesis.nemesis import Nemesis, ProxiedCluster

__all__ = ["STEPS", "MembershipOptions", "MembershipScript", "check_membership"]

log = logging.getLogger("tests.nemesis")

STEPS: tuple[str, ...] = ("grow", "shrink", "replace")

#: The plan of ``--membership once``: 3 -> 5 -> 3 voters, then a replacement.
GROW_SHRINK_REPLACE: tuple[str, ...] = ("grow", "grow", "shrink", "shrink", "replace")


class MembershipFailed(Exception):
    """A step failed in a way that is a store anomaly (the message says how)."""


@dataclass(frozen=True)
class MembershipOptions:
    plan: Sequence[str] = GROW_SHRINK_REPLACE
    cycle: bool = False  # repeat the plan until stopped
    quiet: tuple[float, float] = (0.5, 1.5)  # seconds between steps
    step_timeout: float = 60.0  # one step, retries included
    clerk_timeout: float = 10.0  # one member_* call
    leader_removal: float = 0.5  # chance that a shrink removes the leader
    min_voters: int = 3  # a shrink leaves at least this many
    min_proxied: int = 2  # bootstrap (proxied) nodes never removed below this
    removed_exit_wait: float = 3.0  # seconds a removed node is given to stop


@dataclass
class MembershipScript:
    """Runs the plan on ``cluster``, recording each action on ``nemesis``."""

    cluster: ProxiedCluster
    nemesis: Nemesis
    seed: int
    options: MembershipOptions = field(default_factory=MembershipOptions)
    counts: Counter[str] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for step in self.options.plan:
            if step not in STEPS:
                raise ValueError(f"unknown membership step {step!r}; known: {STEPS}")
        self.rng = random.Random(self.seed ^ 0x3E3B)
        # What the last failed call said (for a step that hangs).
        self.last_problem = "-"

    def record(self, kind: str, detail: str) -> None:
        self.nemesis.record(kind, detail)

    async def run(self, stop: asyncio.Event) -> None:
        """The plan (once, or cycled until ``stop``); failures go to
        :attr:`anomalies`, the script then stops changing the membership."""
        ck = AsyncClerk(self.cluster.member_addresses(), timeout=self.options.clerk_timeout,
                        client_id=self.rng.getrandbits(62) + 1)
        try:
            while True:
                for step in self.options.plan:
                    quiet = self.rng.uniform(*self.options.quiet)
                    if self.options.cycle and stop.is_set():
                        return
                    await asyncio.sleep(quiet)
                    try:
                        await asyncio.wait_for(self._step(ck, step), self.options.step_timeout)
                    except TimeoutError:
                        self._fail(f"hang: membership step {step} did not finish within "
                                   f"{self.options.step_timeout:g}s (last: {self.last_problem})")
                        return
                    except MembershipFailed as exc:
                        self._fail(str(exc))
                        return
                if not self.options.cycle:
                    return
        finally:
            await ck.close()

    def _fail(self, text: str) -> None:
        self.anomalies.append(text)
        self.record("member_failed", text.splitlines()[0])

    async def _step(self, ck: AsyncClerk, step: str) -> None:
        c = self.cluster
        # Draw the same numbers whatever the step does, so that one seed
        # makes the same choices whatever happened before.
        take_leader = self.rng.random() < self.options.leader_removal
        pick = self.rng.random()
        active = c.active()
        if step == "grow":
            self.counts["grow"] += 1
            await self._grow(ck)
            return
        leader = await c.wait_leader(self.options.step_timeout / 4, exclude=sorted(c.leaving))
        # The network faults act on the proxied bootstrap nodes only
        # (ProxiedCluster): keep ``min_proxied`` of them, and prefer
        # removing a node that joined later.
        proxied = [i for i in active if i < c.n]
        removable = [i for i in active
                     if i >= c.n or len(proxied) > self.options.min_proxied]
        followers = [i for i in removable if i != leader]
        joined = [i for i in followers if i >= c.n] or followers
        if step == "shrink":
            if len(active) <= self.options.min_voters:
                self.record("member_skip", f"shrink: only {len(active)} active voters")
                return
            self.counts["shrink"] += 1
            victim = leader if take_leader and leader in removable \
                else joined[int(pick * len(joined))]
            await self._remove(ck, victim, "the leader" if victim == leader else "a follower")
            return
        # replace: a follower that can go, else any follower (the leader
        # is the only node that joined later).
        self.counts["replace"] += 1
        followers = followers or [i for i in active if i != leader]
        victim = followers[int(pick * len(followers))]
        with c.lock:
            c.leaving.add(victim)
            c.kill(victim)
        self.record("replace_kill", f"kill -9 node {victim} (a follower; its disk is lost)")
        await self._remove(ck, victim, "dead")
        await self._grow(ck)

    async def _grow(self, ck: AsyncClerk) -> None:
        c = self.cluster
        new = await asyncio.to_thread(c.add_node)
        address = c.address(new)
        self.record("member_add", f"node {new} at {address} as a learner")
        await self._until(ck, lambda: ck.member_add(new, address),
                          lambda ms: any(m.id == new for m in ms), f"add {new}")
        self.counts["member_add"] += 1
        target = await self._commit_index()
        await asyncio.to_thread(c.join_node, new)
        self.record("member_join", f"node {new} started with --join; waiting until it "
                                   f"applied index {target}")
        status = await self._caught_up(new, target)
        self.record("member_caught_up", status)
        refused = 0
        while True:
            try:
                await self._until(ck, lambda: ck.member_promote(new),
                                  lambda ms: any(m.id == new and m.role == "voter" for m in ms),
                                  f"promote {new}")
                break
            except BadRequest as exc:
                if "90%" not in str(exc):
                    raise MembershipFailed(f"membership: promote {new} refused: {exc}") from None
                # Behind again (faults, a busy leader): wait, as an operator would.
                refused += 1
                self.counts["promote_refused"] += 1
                if refused == 1:
                    self.record("promote_refused", str(exc))
                await asyncio.sleep(0.5)
        self.counts["member_promote"] += 1
        self.record("member_promote", f"node {new} is a voter"
                    + (f" (refused {refused} times first: behind)" if refused else ""))

    async def _remove(self, ck: AsyncClerk, victim: int, what: str) -> None:
        c = self.cluster
        with c.lock:
            c.leaving.add(victim)
            was_running = c.alive(victim)
        self.record("member_remove", f"node {victim} ({what})")
        await self._until(ck, lambda: ck.member_remove(victim),
                          lambda ms: all(m.id != victim for m in ms), f"remove {victim}")
        with c.lock:
            c.members.discard(victim)
            c.leaving.discard(victim)
        self.counts["member_remove"] += 1
        if not was_running:
            self.record("member_removed", f"node {victim} removed (it was down)")
            return
        deadline = time.monotonic() + self.options.removed_exit_wait
        while c.alive(victim) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        c.check_exits()
        if c.alive(victim):
            # Not an anomaly by itself: a removed node that never learns its
            # removal committed keeps running, and must not disrupt the
            # others (dissertation 4.2.3); it is left running for that.
            self.counts["removed_still_running"] += 1
            self.record("member_removed", f"node {victim} removed; still running after "
                                          f"{self.options.removed_exit_wait:g}s")
        else:
            self.counts["removed_exited"] += 1
            self.record("member_removed", f"node {victim} removed; it stopped by itself")

    async def _until(self, ck: AsyncClerk, change: Callable[[], Awaitable[list[Member]]],
                     done: Callable[[list[Member]], bool], what: str) -> None:
        """Run ``change`` until it returns, retrying after ``ClerkTimeout``
        (the cluster electing, or held down by a fault) unless
        ``member_list`` shows it done. ``BadRequest`` propagates."""
        tried = False
        while True:
            try:
                await change()
                return
            except ClerkTimeout as exc:
                self.counts["member_call_timeout"] += 1
                self.last_problem = f"{what}: {exc}"
                log.info("nemesis: membership %s: %s; checking the membership", what, exc)
            except BadRequest:
                # "already a learner", "not a member": an earlier call of
                # ours that timed out may have done it.
                if tried and done(await ck.member_list()):
                    return
                raise
            tried = True
            try:
                if done(await ck.member_list()):
                    return
            except ClerkTimeout as exc:
                self.last_problem = f"{what}, then member_list: {exc}"

    async def _commit_index(self) -> int:
        """The highest commit index a member reports (0 if none answers)."""
        while True:
            found = [s.commit_index for s in await self.cluster.statuses() if s is not None]
            if found:
                return max(found)
            await asyncio.sleep(0.1)

    async def _caught_up(self, node: int, target: int) -> str:
        """Poll until ``node`` applied ``target``; a description of its state."""
        while True:
            (st,) = await self.cluster.statuses([node])
            self.last_problem = f"node {node} status {st}".replace("\n", " ")
            if st is not None and st.applied_index >= target:
                return (f"node {node} applied {st.applied_index} (target {target}), "
                        f"snapshot index {st.snapshot_index}, first index {st.first_index}")
            await asyncio.sleep(0.1)


async def check_membership(cluster: ProxiedCluster, timeout: float) -> list[str]:
    """The end-of-run membership checks: ``member_list`` (from a fresh clerk
    given the members' addresses) shows exactly the script's members, at
    their addresses (a bootstrap member's is its real one or a proxy's: the
    bootstrap membership is the config of the node that bootstrapped, see
    ProxiedCluster), all voters; and every member applied the same index
    within ``timeout`` seconds (the cluster is idle by then)."""
    problems: list[str] = []
    expected = {i: cluster.address(i) for i in sorted(cluster.members)}
    try:
        async with AsyncClerk(cluster.member_addresses(), timeout=timeout) as ck:
            members = await ck.member_list()
    except ClerkTimeout as exc:
        return [f"hang: member_list after healing: {exc}"]
    listed = {m.id: m.address for m in members}
    if set(listed) != set(expected) or any(
            a not in cluster.addresses_of(i) for i, a in listed.items()):
        problems.append(f"membership: member_list shows {listed}, the script made {expected}")
    learners = [m.id for m in members if m.role != "voter"]
    if learners:
        problems.append(f"membership: members {learners} are still learners at the end")
    deadline = time.monotonic() + timeout
    nodes = sorted(expected)
    applied: list[int | None] = []
    while time.monotonic() < deadline:
        sts = await cluster.statuses(nodes)
        applied = [None if s is None else s.applied_index for s in sts]
        commits = [s.commit_index for s in sts if s is not None]
        if None not in applied and len(set(applied)) == 1 and applied[0] == max(commits):
            return problems
        await asyncio.sleep(0.1)
    problems.append(f"membership: members {nodes} applied {applied} (not one index "
                    f"within {timeout:g}s of the end; the leader's match indexes at the "
                    f"end: {({m.id: m.match_index for m in members})})")
    return problems
