"""Safety invariants of Raft, checked online while the simulator runs.

The simulator reports what it observes (a node became leader, a node's commit
index moved, a node applied an entry, a read was released, a ``Ready`` asked
for a hard state or entries to be persisted) and the ``Checker`` raises
``SafetyViolation`` the moment any of the properties below breaks. The names
follow the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable
Consensus Algorithm", 2014), Figure 3, and the dissertation (Ongaro 2014):

Election Safety (Fig. 3, 5.2)
    At most one leader can be elected in a given term. Every time a node is
    seen as leader we record ``term -> id`` for the whole history.

Vote safety (Fig. 2, "votedFor ... persistent")
    A node votes for at most one candidate per term, *across crashes*: the
    hard states the core asks to persist never name two different votes for
    one term. This is the root cause checked directly; Election Safety is its
    consequence.

Log Matching (Fig. 3, 5.3)
    (a) If two logs contain an entry with the same index and term, the entries
    are identical: every entry any node persists is checked against a global
    ``(index, term) -> data`` map. (b) If two logs agree on the term at index
    ``i`` they agree on all entries before ``i``: checked pairwise over the
    persisted logs periodically and at the end of every run.

Leader Completeness (Fig. 3, 5.4)
    If an entry is committed in term ``T`` then it is present in the log of
    every leader of a term greater than ``T``. A leader's log is recorded at
    the moment it became leader; an index is "committed in term T" when a
    leader of term ``T`` advanced its commit index past it (the smallest such
    ``T`` is kept). The check runs both when a leader is elected (against
    everything already committed) and when something is newly committed
    (against every leader already elected in a later term). Entries below a
    leader's snapshot are covered by the snapshot and not re-checked.

State Machine Safety (Fig. 3, 5.4.3)
    If a node has applied an entry at index ``i``, no other node ever applies a
    different entry at ``i``. Also: an applied entry must be the committed one
    (same term as recorded at commit), applied entries are contiguous, each
    payload is applied at most once at one index, and every payload was
    actually proposed (no invented entries).

Monotonicity
    Within one incarnation of a node its term, commit index and applied index
    never decrease, and commit never exceeds what some leader committed. A
    restarted node may re-apply from its snapshot, but never a different entry
    (State Machine Safety covers that).

Snapshot integrity (7)
    A snapshot installed at index ``i`` must carry the state-machine digest of
    the global applied sequence at ``i`` and the committed term at ``i``.

Linearizable reads (dissertation 6.4, ReadIndex)
    A read issued at virtual time ``t`` must be released with a read index
    ``r >= c`` where ``c`` is the highest index known committed anywhere at
    ``t``; it must be released by the node it was issued to, while that node
    is leader of the same term it was issued in.

Durability
    An entry that was committed and applied by anyone is never lost: after the
    faults heal every member of the final configuration converges on a state
    machine containing it. Leader Completeness catches most losses as they
    happen; ``check_final`` closes the loop. A node removed from the cluster
    may stop short (nobody replicates to it any more), but whatever it
    applied is checked like everyone's (State Machine Safety).

Membership (dissertation chapter 4), when the voter set changes
    None of the checks above counts nodes: "committed" is what a leader
    claims, and the claims are checked against each other, so they keep
    their meaning when voters come and go. What a changing voter set adds:

    * Commit quorum (a rule): when a leader advances its commit index to
      ``i``, a majority of the voters of the configuration in force on it
      durably hold ``i`` (with its term). This is the claim itself, checked
      against the disks; a leader counting learners, or a stale
      configuration, breaks it at once.
    * Configuration in force (4.1): every node's membership is the one in
      the latest configuration entry of its log (committed or not), else
      its snapshot's, else its bootstrap one.
    * One at a time (4.1): no log holds two configuration entries past the
      highest committed index (a leader appends one only once the previous
      one is committed, and Log Matching spreads that prefix).
    * Own term first (Ongaro, raft-dev 2015): a leader proposes a change only
      once it has committed an entry of its own term.
    * Only voters campaign (4.2.1): a node that becomes pre-candidate,
      candidate or leader is a voter of the membership in force on it (or,
      while that is uncommitted, of the one before: a voter whose own
      removal is pending may finish it).

    All but the second are rules, not consequences: ``rule_checks=False``
    turns them off to see whether breaking a rule also breaks one of the
    consequences above within a seed budget (tests/sim/test_bug_injection.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from raft.membership import Membership
from raft.types import NONE, Entry, EntryType, HardState, ReadState, SnapshotMeta

__all__ = ["Checker", "LogView", "SafetyViolation", "TermOf"]

#: index -> term in a leader's log, or None when it has no entry there.
TermOf = Callable[[int], "int | None"]
#: (node, index, term) -> whether the node durably holds that entry (or a
#: snapshot covering it).
Holds = Callable[[int, int, int], bool]


class SafetyViolation(Exception):
    """A broken invariant. ``invariant`` names which one (a short slug)."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LogView:
    """A node's (persisted) log: ``terms[k]`` is the term at ``first + k``.
    ``first - 1`` is the snapshot boundary; ``snap_term`` its term."""

    first: int
    snap_term: int
    terms: tuple[int, ...]

    @property
    def last(self) -> int:
        return self.first + len(self.terms) - 1

    def term_at(self, index: int) -> int | None:
        """Term at ``index``; ``None`` when compacted away or past the end."""
        if index == self.first - 1:
            return self.snap_term
        k = index - self.first
        if 0 <= k < len(self.terms):
            return self.terms[k]
        return None


@dataclass(slots=True)
class _PendingRead:
    node: int
    term: int
    start_time: float
    min_index: int


@dataclass(slots=True)
class _NodeState:
    """Per-incarnation observations of one node."""

    term: int = 0
    commit: int = 0
    applied: int = 0


@dataclass
class Checker:
    """Online invariant checker. One instance per simulated run."""

    #: term -> leader id, over the whole history (Election Safety).
    leaders: dict[int, int] = field(default_factory=dict)
    #: term -> that leader's log at the moment it became leader.
    leader_logs: dict[int, LogView] = field(default_factory=dict)
    #: (node, term) -> vote the node asked to persist (vote safety).
    votes: dict[tuple[int, int], int] = field(default_factory=dict)
    #: (index, term) -> data of every entry ever persisted (Log Matching a).
    entry_data: dict[tuple[int, int], bytes] = field(default_factory=dict)
    #: index -> term of the entry known committed there; [0] is a sentinel.
    committed_terms: list[int] = field(default_factory=lambda: [0])
    #: index -> smallest term of a leader that committed it.
    commit_term: list[int] = field(default_factory=lambda: [0])
    #: index -> (term, data) applied by anyone (State Machine Safety).
    applied: list[tuple[int, bytes]] = field(default_factory=lambda: [(0, b"")])
    #: index -> state-machine digest after applying 1..index.
    digests: list[bytes] = field(default_factory=lambda: [b""])
    #: payload -> index it was applied at (no duplicates).
    applied_payloads: dict[bytes, int] = field(default_factory=dict)
    #: payloads handed to ``propose`` (no invented entries).
    proposed: set[bytes] = field(default_factory=set)
    #: encoded memberships appended by ``propose_conf_change`` (ditto; the
    #: same membership may recur, so these are exempt from the
    #: applied-once rule).
    proposed_confs: set[bytes] = field(default_factory=set)
    #: Check the membership *rules* (own term first, one at a time, only
    #: voters campaign), not only their consequences.
    rule_checks: bool = True
    reads: dict[bytes, _PendingRead] = field(default_factory=dict)
    nodes: dict[int, _NodeState] = field(default_factory=dict)
    reads_released: int = 0
    #: (leader, term) -> highest commit index already examined.
    leader_commit_seen: dict[tuple[int, int], int] = field(default_factory=dict)
    max_leader_term: int = 0

    # -- global knowledge --------------------------------------------------

    @property
    def max_committed(self) -> int:
        """Highest index known committed anywhere (by any leader)."""
        return len(self.committed_terms) - 1

    # -- hooks called by the simulator --------------------------------------

    def on_restart(self, node: int, hs: HardState, applied: int) -> None:
        """A node was rebuilt from its storage: a fresh incarnation."""
        self.nodes[node] = _NodeState(term=hs.term, commit=hs.commit, applied=applied)

    def on_persist(self, node: int, hs: HardState | None, entries: Sequence[Entry]) -> None:
        """The core asked to persist ``hs`` and ``entries`` (one ``Ready``)."""
        if hs is not None and hs.vote != NONE:
            key = (node, hs.term)
            prev = self.votes.setdefault(key, hs.vote)
            if prev != hs.vote:
                raise SafetyViolation(
                    "vote-safety",
                    f"node {node} voted for {prev} and then {hs.vote} in term {hs.term}",
                )
        for e in entries:
            key2 = (e.index, e.term)
            prev_data = self.entry_data.setdefault(key2, e.data)
            if prev_data != e.data:
                raise SafetyViolation(
                    "log-matching",
                    f"node {node} persisted entry {e.index}@t{e.term} = {e.data!r}, "
                    f"but another node holds {prev_data!r} at the same index and term",
                )

    def on_state(self, node: int, term: int, commit: int, is_leader: bool) -> None:
        """After every step: monotonic term/commit; commit never beyond a leader's."""
        st = self.nodes.setdefault(node, _NodeState())
        if term < st.term:
            raise SafetyViolation(
                "monotonic-term", f"node {node} term went back from {st.term} to {term}"
            )
        if commit < st.commit:
            raise SafetyViolation(
                "monotonic-commit", f"node {node} commit went back from {st.commit} to {commit}"
            )
        st.term = term
        st.commit = commit
        if not is_leader and commit > self.max_committed:
            raise SafetyViolation(
                "commit-bound",
                f"follower {node} has commit {commit} but no leader ever committed past "
                f"{self.max_committed}",
            )

    def on_leader(self, node: int, term: int, log: LogView) -> None:
        """``node`` is (or is still) leader of ``term``; ``log`` is its log now."""
        prev = self.leaders.setdefault(term, node)
        if prev != node:
            raise SafetyViolation(
                "election-safety", f"term {term} has two leaders: {prev} and {node}"
            )
        if term in self.leader_logs:
            return
        self.leader_logs[term] = log
        self.max_leader_term = max(self.max_leader_term, term)
        # Leader Completeness against everything already committed before it.
        for i in range(max(log.first, 1), self.max_committed + 1):
            if self.commit_term[i] < term:
                self._check_leader_has(term, log, i)

    def on_leader_commit(self, node: int, term: int, commit: int, term_of: TermOf) -> None:
        """Leader ``node`` of ``term`` has commit index ``commit``: every index up
        to it is committed in ``term`` (or earlier). Only the part not seen
        before from this leader is examined."""
        key = (node, term)
        seen = self.leader_commit_seen.get(key, 0)
        if commit <= seen:
            return
        self.leader_commit_seen[key] = commit
        top = self.max_committed
        for i in range(seen + 1, commit + 1):
            t = term_of(i)
            if i <= top:
                if t is not None and t != self.committed_terms[i]:
                    raise SafetyViolation(
                        "state-machine-safety",
                        f"leader {node} (term {term}) committed {i}@t{t}, but "
                        f"{i}@t{self.committed_terms[i]} was committed before",
                    )
                if self.commit_term[i] > term:
                    self.commit_term[i] = term
                    self._check_committed_everywhere(i)
                continue
            if t is None:
                raise SafetyViolation(
                    "commit-bound", f"leader {node} committed {commit} but has no entry {i}"
                )
            self.committed_terms.append(t)
            self.commit_term.append(term)
            self._check_committed_everywhere(i)

    def on_apply(self, node: int, entry: Entry, digest: bytes) -> None:
        """``node`` applied ``entry``; its state machine digest is now ``digest``."""
        st = self.nodes.setdefault(node, _NodeState())
        i = entry.index
        if i != st.applied + 1:
            raise SafetyViolation(
                "apply-order", f"node {node} applied {i} right after {st.applied}"
            )
        if i > st.commit:
            raise SafetyViolation(
                "apply-uncommitted", f"node {node} applied {i} beyond its commit {st.commit}"
            )
        st.applied = i
        if i > self.max_committed or self.committed_terms[i] != entry.term:
            known = self.committed_terms[i] if i <= self.max_committed else None
            raise SafetyViolation(
                "state-machine-safety",
                f"node {node} applied {i}@t{entry.term}, but the committed entry there is "
                f"{'unknown (never committed by a leader)' if known is None else f't{known}'}",
            )
        if i < len(self.applied):
            t, data = self.applied[i]
            if (t, data) != (entry.term, entry.data):
                raise SafetyViolation(
                    "state-machine-safety",
                    f"node {node} applied {i}@t{entry.term}={entry.data!r}, another node "
                    f"applied {i}@t{t}={data!r}",
                )
            if self.digests[i] != digest:
                raise SafetyViolation(
                    "state-machine-safety",
                    f"node {node} state digest at {i} differs from the cluster's",
                )
            return
        assert i == len(self.applied), "contiguity checked above"
        if entry.type is EntryType.CONF_CHANGE:
            if entry.data not in self.proposed_confs:
                raise SafetyViolation(
                    "integrity", f"node {node} applied configuration {entry.data!r} "
                    "which no leader proposed"
                )
        elif entry.data:
            if entry.data not in self.proposed:
                raise SafetyViolation(
                    "integrity", f"node {node} applied {entry.data!r} which nobody proposed"
                )
            prev = self.applied_payloads.setdefault(entry.data, i)
            if prev != i:
                raise SafetyViolation(
                    "integrity", f"payload {entry.data!r} applied at {prev} and again at {i}"
                )
        self.applied.append((entry.term, entry.data))
        self.digests.append(digest)

    def on_snapshot_restore(
        self, node: int, meta: SnapshotMeta, sm_index: int, digest: bytes
    ) -> None:
        """``node`` restored its state machine from a snapshot."""
        st = self.nodes.setdefault(node, _NodeState())
        i = meta.index
        if sm_index != i:
            raise SafetyViolation(
                "snapshot-integrity", f"node {node} snapshot meta {i} but data says {sm_index}"
            )
        if i < st.applied:
            raise SafetyViolation(
                "monotonic-applied",
                f"node {node} installed snapshot {i} behind its applied index {st.applied}",
            )
        if i > self.max_committed or self.committed_terms[i] != meta.term:
            raise SafetyViolation(
                "snapshot-integrity",
                f"node {node} installed snapshot {i}@t{meta.term} that is not committed",
            )
        if i < len(self.digests) and self.digests[i] != digest:
            raise SafetyViolation(
                "snapshot-integrity", f"node {node} snapshot at {i} has the wrong state digest"
            )
        st.applied = i
        st.commit = max(st.commit, i)

    def on_propose(self, data: bytes) -> None:
        self.proposed.add(data)

    # -- membership ---------------------------------------------------------------

    def on_conf_propose(
        self,
        node: int,
        term: int,
        index: int,
        data: bytes,
        own_term_committed: bool,
        prev_conf: int,
        commit: int,
    ) -> None:
        """Leader ``node`` of ``term`` appended configuration ``data`` at
        ``index``. Before the append its commit index was ``commit``, the
        entry there was of its own term iff ``own_term_committed``, and the
        latest configuration entry in its log was at ``prev_conf`` (0: none
        in the log)."""
        self.proposed_confs.add(data)
        if not self.rule_checks:
            return
        if not own_term_committed:
            raise SafetyViolation(
                "conf-own-term",
                f"leader {node} of term {term} proposed a membership change (index {index}) "
                f"before committing an entry of its term (commit {commit})",
            )
        if prev_conf > commit:
            raise SafetyViolation(
                "conf-one-at-a-time",
                f"leader {node} of term {term} proposed a membership change (index {index}) "
                f"while the one at {prev_conf} was not committed (commit {commit})",
            )

    def check_conf_pending(self, node: int, conf_indexes: Sequence[int]) -> None:
        """``conf_indexes``: the configuration entries in ``node``'s log past
        ``max_committed``. At most one may be (dissertation 4.1)."""
        if self.rule_checks and len(conf_indexes) > 1:
            raise SafetyViolation(
                "conf-one-at-a-time",
                f"node {node} holds configuration entries at {sorted(conf_indexes)}, more than "
                f"one past the highest committed index {self.max_committed}",
            )

    def check_membership_in_force(
        self, node: int, in_force: Membership, expected: Membership, source: str
    ) -> None:
        """Dissertation 4.1: a server uses the latest configuration in its
        log, committed or not. ``expected`` is that one, found by the
        caller from the node's log (``source`` says where)."""
        if in_force != expected:
            raise SafetyViolation(
                "membership-in-force",
                f"node {node} uses {in_force.describe()}, but the latest configuration it holds "
                f"({source}) is {expected.describe()}",
            )

    def on_campaign(self, node: int, role: str, term: int, membership: Membership,
                    before: Membership | None = None) -> None:
        """``node`` became ``role`` (pre-candidate, candidate or leader) in
        ``term`` under ``membership``: it must be one of its voters
        (dissertation 4.2.1: learners and removed servers never stand), or a
        voter of ``before``, the membership preceding an uncommitted
        ``membership`` (a voter whose own removal is pending may finish it:
        ``RaftCore._promotable``)."""
        if before is not None and node in before.voters:
            return
        if self.rule_checks and node not in membership.voters:
            kind = "learner" if node in membership.learners else "non-member"
            raise SafetyViolation(
                "conf-only-voters-campaign",
                f"node {node}, a {kind} of {membership.describe()}, became {role} in term {term}",
            )

    def check_commit_quorum(
        self, node: int, term: int, index: int, entry_term: int, voters: frozenset[int],
        holds: Holds,
    ) -> None:
        """Leader ``node`` of ``term`` committed ``index`` (of ``entry_term``)
        under a configuration whose voters are ``voters``: a majority of them
        must hold it on disk (paper 5.3; with one-server changes any
        majority of the configuration in force overlaps any majority of the
        previous one, dissertation 4.1)."""
        if not self.rule_checks:
            return
        have = sorted(v for v in voters if holds(v, index, entry_term))
        if 2 * len(have) <= len(voters):
            raise SafetyViolation(
                "commit-quorum",
                f"leader {node} of term {term} committed {index}@t{entry_term}, but only "
                f"{have} of its voters {sorted(voters)} hold it",
            )

    def on_read_start(self, ctx: bytes, node: int, term: int, now: float) -> None:
        self.reads[ctx] = _PendingRead(node, term, now, self.max_committed)

    def on_read_release(self, node: int, rs: ReadState, term: int, is_leader: bool) -> None:
        """ReadIndex (dissertation 6.4): ``rs.index`` must cover every write
        committed before the read began, and only the leader may release it."""
        read = self.reads.get(rs.context)
        if read is None:
            raise SafetyViolation(
                "linearizable-read", f"node {node} released unknown read {rs.context!r}"
            )
        if read.node != node:
            raise SafetyViolation(
                "linearizable-read",
                f"read {rs.context!r} issued at node {read.node} released by node {node}",
            )
        if not is_leader or term != read.term:
            raise SafetyViolation(
                "linearizable-read",
                f"read {rs.context!r} issued to leader {node} in term {read.term} released "
                f"while it is {'leader' if is_leader else 'not leader'} in term {term}",
            )
        if rs.index < read.min_index:
            raise SafetyViolation(
                "linearizable-read",
                f"read {rs.context!r} began at t={read.start_time:.2f} when {read.min_index} was "
                f"committed, but node {node} released it at read index {rs.index} (stale read)",
            )
        self.reads_released += 1

    # -- whole-log checks -------------------------------------------------------

    def check_log_matching(self, logs: dict[int, LogView]) -> None:
        """Log Matching (b): pairwise, agreeing terms at ``i`` imply agreeing
        prefixes. Entries below either snapshot are not compared (they are
        committed, and State Machine Safety covers them)."""
        ids = sorted(logs)
        for a_pos, a in enumerate(ids):
            la = logs[a]
            for b in ids[a_pos + 1 :]:
                lb = logs[b]
                lo = max(la.first, lb.first)
                hi = min(la.last, lb.last)
                if hi < lo:
                    continue
                ta = la.terms[lo - la.first : hi - la.first + 1]
                tb = lb.terms[lo - lb.first : hi - lb.first + 1]
                if ta == tb:
                    continue
                # Highest index where they agree; everything below must agree.
                k = len(ta) - 1
                while k >= 0 and ta[k] != tb[k]:
                    k -= 1
                if k >= 0 and ta[: k + 1] != tb[: k + 1]:
                    j = next(x for x in range(k + 1) if ta[x] != tb[x])
                    raise SafetyViolation(
                        "log-matching",
                        f"nodes {a} and {b} agree at {lo + k}@t{ta[k]} but differ at "
                        f"{lo + j}: t{ta[j]} vs t{tb[j]}",
                    )
        for node, lv in logs.items():
            # Committed entries a node holds must be the committed ones.
            hi = min(lv.last, self.max_committed)
            for i in range(max(lv.first, 1), hi + 1):
                if lv.terms[i - lv.first] != self.committed_terms[i]:
                    # Allowed only if the node has not learned it is committed
                    # (a follower can hold a stale suffix it will overwrite).
                    st = self.nodes.get(node)
                    if st is not None and i <= st.commit:
                        raise SafetyViolation(
                            "log-matching",
                            f"node {node} has {i}@t{lv.terms[i - lv.first]} below its commit "
                            f"{st.commit}, but {i}@t{self.committed_terms[i]} is committed",
                        )
                    break

    def check_final(self, applied: dict[int, int], digests: dict[int, bytes]) -> None:
        """Durability after healing: every node given (the members of the
        final configuration) reached the same point, which includes
        everything ever committed."""
        for node, idx in applied.items():
            if idx < self.max_committed:
                raise SafetyViolation(
                    "durability",
                    f"node {node} applied only up to {idx}, but {self.max_committed} was committed",
                )
            if idx < len(self.digests) and digests[node] != self.digests[idx]:
                raise SafetyViolation(
                    "durability", f"node {node} final state differs from the cluster's at {idx}"
                )

    # -- helpers ------------------------------------------------------------------

    def _check_leader_has(self, leader_term: int, log: LogView, i: int) -> None:
        if i < log.first - 1:
            return  # compacted into the leader's snapshot: committed, fine
        t = log.term_at(i)
        if t != self.committed_terms[i]:
            raise SafetyViolation(
                "leader-completeness",
                f"leader {self.leaders[leader_term]} of term {leader_term} lacks committed entry "
                f"{i}@t{self.committed_terms[i]} (committed in term {self.commit_term[i]}); "
                f"its log has {'nothing' if t is None else f't{t}'} there",
            )

    def _check_committed_everywhere(self, i: int) -> None:
        ct = self.commit_term[i]
        if ct >= self.max_leader_term:
            return
        for lt, log in self.leader_logs.items():
            if lt > ct:
                self._check_leader_has(lt, log, i)
