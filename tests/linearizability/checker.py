"""A porcupine-style linearizability checker for the KV model.

What it decides
---------------
A history (see :mod:`tests.linearizability.history`) is *linearizable*
(Herlihy & Wing, 1990) if every operation can be given a single instant
inside its ``[call, ret]`` interval such that, executed one at a time in the
order of those instants, the operations behave like a single sequential
key-value map: ``get`` returns the current value ("" for a missing key),
``put`` sets it, ``append`` concatenates (starting from "" when missing),
``delete`` makes the key missing again. An operation with an unknown outcome
(``ret == inf``) may be placed anywhere after its call, or left out.

How
---
1. **Partition by key.** Every KV operation touches one key and the keys are
   independent, so the history is linearizable iff each per-key
   sub-history is (linearizability is *local*, Herlihy & Wing 1990;
   porcupine calls this a partition function, after the P-compositionality
   of Horn & Kroening, FORTE 2015). Each key is checked on its own, which
   turns one exponential search into many small ones.

2. **Wing & Gong's search with Lowe's memoization** (J. M. Wing and C. Gong,
   "Testing and Verifying Concurrent Objects", JPDC 1993; G. Lowe, "Testing
   for linearizability", Concurrency and Computation: Practice and
   Experience, 2017), as implemented by porcupine
   (github.com/anishathalye/porcupine, ``checker.go``):

   * Every operation contributes a *call* and a *return* entry; all entries
     are sorted by time (calls before returns at equal times, so touching
     intervals count as concurrent) into a doubly linked list.
   * The search walks the list from the head. At a call entry it tries to
     linearize that operation *now*: apply the model step; if legal and the
     configuration (set of linearized operations, model state) has not been
     seen before, the operation's call and return entries are *lifted* out
     of the list, the configuration is pushed on a stack, and the walk
     restarts from the head. Otherwise it moves on to the next entry.
   * Reaching a return entry means that operation had to be linearized
     before this point but no choice so far allows it: backtrack — pop the
     last linearized operation, *unlift* its entries (O(1) relinking), and
     continue the walk just after its call entry (the next alternative).
   * Success when every completed operation is linearized (unknown-outcome
     writes left over are taken never to have happened); failure when a
     return entry is reached with nothing left to undo.
   * The cache of configurations ``(bitset, state)`` (Lowe's key idea) makes
     the search explore each configuration once: two different orders that
     reach the same set of operations and the same value are equivalent.

   Python specifics: the linearized set is an ``int`` bitset, the model
   state is the value string itself, the cache a ``set`` of
   ``(bits, state)`` tuples, and the linked list lives in flat ``list``\\s of
   indices (no per-entry objects).

3. **A read rule** (sound, not in porcupine): if a pending ``get`` returns the
   current value, linearizing it immediately is never wrong — a get does not
   change the state and any linearization that places it later can move it
   here. So such a step is *forced*: when the search backtracks over it,
   it keeps backtracking instead of trying siblings. This prunes the
   ``2^k`` orders of ``k`` concurrent reads of the same value.

Unknown-outcome gets are dropped (a read nobody saw constrains nothing);
unknown-outcome writes are kept with ``ret = inf``: they are always
candidates and never force a backtrack.

On failure the checker reports the key, the longest linearizable prefix it
found, the operation that could not be linearized after it (whose return
entry stopped the search) and the operations concurrent with it — the same
information porcupine's visualization shows, as text.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from tests.linearizability.history import Operation, OpKind

__all__ = ["CheckResult", "Outcome", "check", "check_key"]

_GET, _PUT, _APPEND, _DELETE = 0, 1, 2, 3
_KIND_CODE = {OpKind.GET: _GET, OpKind.PUT: _PUT, OpKind.APPEND: _APPEND, OpKind.DELETE: _DELETE}

# How many search steps between two looks at the clock.
_CLOCK_EVERY = 4096
# Explanation size limits.
_PREFIX_TAIL = 8
# Heuristic look-ahead past the frontier (affects speed, never the verdict).
_LOOKAHEAD_ENTRIES = 48
_LOOKAHEAD_READS = 8
_MAX_CONCURRENT = 30


class Outcome(Enum):
    """The verdict: linearizable, not linearizable, or undecided (timeout)."""

    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckResult:
    """The checker's verdict.

    ``ok`` is true only when the history was *proven* linearizable; a
    timeout gives ``ok == False`` and ``unknown == True`` (never ok).
    ``key`` names the failing (or timed-out) key; ``explanation`` is a
    human-readable report suitable for an assertion message.
    """

    outcome: Outcome
    key: str | None = None
    explanation: str = ""
    operations: int = 0
    keys: int = 0
    elapsed: float = 0.0
    per_key_steps: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def unknown(self) -> bool:
        return self.outcome is Outcome.UNKNOWN

    @property
    def illegal(self) -> bool:
        return self.outcome is Outcome.ILLEGAL

    def __str__(self) -> str:
        return self.explanation


@dataclass
class _Stuck:
    """The deepest point the search reached (for the explanation)."""

    prefix: list[int]  # linearized op indices, in linearization order
    state: str  # value after the prefix
    stuck: int  # op whose return entry stopped the search
    pending: list[int]  # ops whose call was pending (not linearized) at that point
    reason: str = ""  # set when the failure was found without a search


@dataclass
class _KeyVerdict:
    outcome: Outcome
    steps: int
    stuck: _Stuck | None = None


def check(history: Iterable[Operation], timeout: float | None = None) -> CheckResult:
    """Check a KV history for linearizability, key by key.

    ``timeout`` (seconds) bounds the whole check; if it runs out before a
    verdict the result is *unknown*. A non-linearizable key found before the
    timeout is reported as such even if other keys were not finished.
    """
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    ops = list(history)
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, op in enumerate(ops):
        if op.kind is OpKind.GET and op.unknown:
            continue  # an unseen read constrains nothing
        by_key[op.key].append(i)
    t0 = min((op.call for op in ops), default=0.0)

    steps: dict[str, int] = {}
    timed_out: list[str] = []
    for key in sorted(by_key):
        idx = by_key[key]
        verdict = _check_partition([ops[i] for i in idx], deadline)
        steps[key] = verdict.steps
        if verdict.outcome is Outcome.ILLEGAL:
            assert verdict.stuck is not None
            text = _explain(key, ops, idx, verdict.stuck, t0)
            return CheckResult(
                Outcome.ILLEGAL, key, text, len(ops), len(by_key), time.monotonic() - start, steps
            )
        if verdict.outcome is Outcome.UNKNOWN:
            timed_out.append(key)
            break  # the deadline has passed: the remaining keys stay unchecked

    elapsed = time.monotonic() - start
    if timed_out:
        key = timed_out[0]
        unchecked = len(by_key) - len(steps)
        text = (
            f"UNKNOWN: timed out after {elapsed:.2f}s (timeout {timeout}s) while checking key "
            f"{key!r} ({len(by_key[key])} operations, {steps[key]} search steps); "
            f"{unchecked} other key(s) not checked. Not proven linearizable."
        )
        return CheckResult(Outcome.UNKNOWN, key, text, len(ops), len(by_key), elapsed, steps)
    text = (
        f"linearizable: {len(ops)} operations on {len(by_key)} key(s) checked in {elapsed:.3f}s"
    )
    return CheckResult(Outcome.OK, None, text, len(ops), len(by_key), elapsed, steps)


def check_key(ops: Sequence[Operation], timeout: float | None = None) -> CheckResult:
    """Check operations that all touch one key (a convenience over :func:`check`)."""
    keys = {op.key for op in ops}
    if len(keys) > 1:
        raise ValueError(f"check_key: operations on several keys: {sorted(keys)[:5]}")
    return check(ops, timeout)


def _check_partition(ops: Sequence[Operation], deadline: float | None) -> _KeyVerdict:
    """The Wing-Gong/Lowe search over the operations of one key (see module doc)."""
    n = len(ops)
    if n == 0:
        return _KeyVerdict(Outcome.OK, 0)

    # Per-operation data, in flat lists for speed.
    kind = [_KIND_CODE[op.kind] for op in ops]
    arg: list[str] = [
        (op.output if op.kind is OpKind.GET else op.value) or "" for op in ops
    ]
    finite = [not op.unknown for op in ops]
    bit = [1 << i for i in range(n)]
    remaining = sum(finite)
    if remaining == 0:
        return _KeyVerdict(Outcome.OK, 0)

    impossible = _impossible_read(ops)
    if impossible >= 0:
        reason = (
            "no put or append called before this get returned could produce the value it "
            "read (e.g. it was never written)"
        )
        return _KeyVerdict(Outcome.ILLEGAL, 0, _Stuck([], "", impossible, [], reason))

    # Entries sorted by time; calls (0) before returns (1) at equal times.
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(ops)]
        + [(op.ret, 1, i) for i, op in enumerate(ops)]
    )
    m = len(events)  # 2n entries; index m is the head sentinel
    head = m
    is_call = [ev[1] == 0 for ev in events]
    e_op = [ev[2] for ev in events]
    ret_entry = [0] * n
    for e, ev in enumerate(events):
        if ev[1] == 1:
            ret_entry[ev[2]] = e
    match = [ret_entry[e_op[e]] if is_call[e] else -1 for e in range(m)]
    nxt = [*range(1, m), -1, 0]  # nxt[head] = first entry
    prv = [head, *range(0, m - 1), -1]

    dead = [-1]  # the read that made the last candidates() call give up, if any

    def resettable(read_call: int, out: str) -> bool:
        """Can a put or delete that may still precede this get lead to ``out``?

        After ``put(p)`` the value starts with ``p``; after ``delete`` it is
        "" or starts with the argument of some append that may follow.
        """
        stop = match[read_call]
        e = nxt[head]
        deleted = False
        appendable = not out
        while e != stop:
            if is_call[e]:
                op = e_op[e]
                k = kind[op]
                if k == _PUT:
                    if out.startswith(arg[op]):
                        return True
                elif k == _DELETE:
                    deleted = True
                elif k == _APPEND and not appendable and out.startswith(arg[op]):
                    appendable = True
                if deleted and appendable:
                    return True
            e = nxt[e]
        return False

    def candidates(state: str) -> list[int]:
        """The call entries that may be linearized next, best first.

        These are the calls before the first return entry (porcupine's
        candidates). A pending get that reads ``state`` is returned alone (a
        forced step). If some pending get can never be satisfied — its output
        does not extend ``state`` (appends only extend a value) and no put or
        delete that may still precede it could reset the value suitably —
        the configuration is dead and nothing is returned. Writes are ordered
        by a heuristic that does not affect completeness: first those that
        move the value towards what a pending get returned, then by earliest
        return (the most urgent first).
        """
        e = nxt[head]
        reads: list[int] = []
        writes: list[int] = []
        while is_call[e]:
            op = e_op[e]
            if kind[op] == _GET:
                if arg[op] == state:
                    return [e]
                reads.append(e)
            else:
                writes.append(e)
            e = nxt[e]
        # Look ahead past the frontier: gets called soon after it tell which
        # order of the pending writes they observed.
        seen = 0
        while e != -1 and seen < _LOOKAHEAD_ENTRIES and len(reads) < _LOOKAHEAD_READS:
            if is_call[e] and kind[e_op[e]] == _GET:
                reads.append(e)
            e = nxt[e]
            seen += 1
        if not reads:
            return writes
        ls = len(state)
        big = len(reads)
        scores = [big] * len(writes)
        exact = [1] * len(writes)
        for rank, r in enumerate(reads):
            out = arg[e_op[r]]
            extends = out.startswith(state)
            if not extends and not resettable(r, out):
                dead[0] = e_op[r]
                return []
            for i, w in enumerate(writes):
                if scores[i] != big:
                    continue
                op = e_op[w]
                k = kind[op]
                if k == _APPEND:
                    v = arg[op]
                    if extends and out.startswith(v, ls):
                        scores[i] = rank
                        exact[i] = 0 if len(out) == ls + len(v) else 1
                elif k == _PUT:
                    v = arg[op]
                    if out.startswith(v):
                        scores[i] = rank
                        exact[i] = 0 if len(out) == len(v) else 1
                elif not out:
                    scores[i] = rank
                    exact[i] = 0
        if len(writes) < 2:
            return writes
        order = sorted(
            range(len(writes)), key=lambda i: (scores[i], exact[i], match[writes[i]])
        )
        return [writes[i] for i in order]

    def stuck_here(depth_path: list[int], state: str) -> _Stuck:
        pending = []
        e = nxt[head]
        while is_call[e]:
            pending.append(e_op[e])
            e = nxt[e]
        dead[0] = -1
        candidates(state)  # recomputed to learn which get (if any) is dead here
        stuck = dead[0] if dead[0] >= 0 else e_op[e]
        return _Stuck([e_op[x] for x in depth_path], state, stuck, pending)

    state = ""
    lin = 0
    cache: set[tuple[int, str]] = set()
    # The path of linearized operations; for each, the configuration before
    # it (state, candidate list, next candidate to try).
    chosen: list[int] = []
    saved_cands: list[list[int]] = []
    saved_pos: list[int] = []
    saved_state: list[str] = []
    best: _Stuck | None = None
    steps = 0
    dead[0] = -1
    cands = candidates(state)
    pos = 0

    while True:
        steps += 1
        if deadline is not None and steps % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            return _KeyVerdict(Outcome.UNKNOWN, steps)

        if pos < len(cands):
            entry = cands[pos]
            pos += 1
            op = e_op[entry]
            k = kind[op]
            if k == _GET:
                new = state
            elif k == _PUT:
                new = arg[op]
            elif k == _APPEND:
                new = state + arg[op]
            else:
                new = ""
            new_lin = lin | bit[op]
            config = (new_lin, new)
            if config in cache:
                continue
            cache.add(config)
            chosen.append(entry)
            saved_cands.append(cands)
            saved_pos.append(pos)
            saved_state.append(state)
            lin = new_lin
            state = new
            # lift: unlink the call entry and its return entry
            nx, pv = nxt[entry], prv[entry]
            prv[nx] = pv
            nxt[pv] = nx
            r = match[entry]
            nx, pv = nxt[r], prv[r]
            nxt[pv] = nx
            if nx != -1:
                prv[nx] = pv
            if finite[op]:
                remaining -= 1
                if remaining == 0:
                    return _KeyVerdict(Outcome.OK, steps)
            dead[0] = -1
            cands = candidates(state)
            pos = 0
            continue

        # Every candidate of this configuration failed: it is a dead end.
        if best is None or len(chosen) > len(best.prefix):
            best = stuck_here(chosen, state)
        if not chosen:
            return _KeyVerdict(Outcome.ILLEGAL, steps, best)
        entry = chosen.pop()
        cands = saved_cands.pop()
        pos = saved_pos.pop()
        state = saved_state.pop()
        op = e_op[entry]
        lin ^= bit[op]
        if finite[op]:
            remaining += 1
        # unlift: relink the return entry, then the call entry
        r = match[entry]
        nx, pv = nxt[r], prv[r]
        nxt[pv] = r
        if nx != -1:
            prv[nx] = r
        nxt[prv[entry]] = entry
        prv[nxt[entry]] = entry


def _impossible_read(ops: Sequence[Operation]) -> int:
    """Index of a get whose output no linearization can produce, or -1.

    A linear-time pre-check that proves many bad histories illegal without a
    search: a non-empty value must start with the argument of some put or
    append (the first write after the key was last missing or reset) whose
    call is no later than the get's return.
    """
    first_call: dict[str, float] = {}
    for op in ops:
        v = op.value
        if op.kind in (OpKind.PUT, OpKind.APPEND) and v and op.call < first_call.get(v, math.inf):
            first_call[v] = op.call
    lengths = sorted({len(v) for v in first_call})
    for i, op in enumerate(ops):
        out = op.output
        if op.kind is not OpKind.GET or not out:
            continue
        possible = False
        for length in lengths:
            if length > len(out):
                break
            call = first_call.get(out[:length])
            if call is not None and call <= op.ret:
                possible = True
                break
        if not possible:
            return i
    return -1


def _explain(key: str, ops: Sequence[Operation], idx: Sequence[int], st: _Stuck, t0: float) -> str:
    """Render the failing window of one key as text (indices refer to ``ops``)."""
    sub = [ops[i] for i in idx]

    def line(j: int) -> str:
        return f"#{idx[j]:<6} {sub[j].describe(t0)}"

    n_unknown = sum(1 for op in sub if op.unknown)
    out = [
        f"NOT LINEARIZABLE: key {key!r} ({len(sub)} operations on this key, "
        f"{n_unknown} with unknown outcome; #N = index in the history; "
        f"times in seconds since the first call, t0={t0:.6f})",
        f"Longest linearizable prefix found: {len(st.prefix)} operation(s)"
        + (f"; the last {_PREFIX_TAIL}, in order:" if len(st.prefix) > _PREFIX_TAIL else ":"),
    ]
    value = ""
    values = []
    for j in st.prefix:
        value = _apply(sub[j], value)
        values.append(value)
    tail_from = max(0, len(st.prefix) - _PREFIX_TAIL)
    for j, v in zip(st.prefix[tail_from:], values[tail_from:], strict=True):
        out.append(f"    {line(j)}   => value {_short(v)}")
    if st.reason:
        out.append(f"Operation that can never be linearized: {line(st.stuck)}")
        out.append(f"    {st.reason}")
        return "\n".join(out)
    out.append(f"Value after the prefix: {_short(st.state)}")
    out.append("First operation that could not be linearized (it returned before any legal")
    out.append("order of the pending operations could include it):")
    out.append(f"    {line(st.stuck)}")
    stuck = sub[st.stuck]
    if stuck.kind is OpKind.GET:
        out.append(
            f"    it read {_short(stuck.output)}, but the value was {_short(st.state)} "
            "and no pending operation could make it so in time"
        )
    in_prefix = set(st.prefix)
    pending = set(st.pending)
    concurrent = [
        j
        for j, op in enumerate(sub)
        if j != st.stuck and (j in pending or (op.call <= stuck.ret and op.ret >= stuck.call))
    ]
    concurrent.sort(key=lambda j: sub[j].call)
    out.append(f"Operations pending at that point or concurrent with it ({len(concurrent)}):")
    for j in concurrent[:_MAX_CONCURRENT]:
        if j in in_prefix:
            tag = "linearized"
        elif j in pending:
            tag = "pending   "
            if sub[j].kind is OpKind.GET and sub[j].output != st.state:
                tag = "pending(x)"
        else:
            tag = "other     "
        out.append(f"  [{tag}] {line(j)}")
    if len(concurrent) > _MAX_CONCURRENT:
        out.append(f"  ... {len(concurrent) - _MAX_CONCURRENT} more")
    out.append(
        "  (linearized = in the prefix; pending = could be linearized next;"
        " pending(x) = a read that does not match the value)"
    )
    return "\n".join(out)


def _apply(op: Operation, value: str) -> str:
    if op.kind is OpKind.PUT:
        return op.value or ""
    if op.kind is OpKind.APPEND:
        return value + (op.value or "")
    if op.kind is OpKind.DELETE:
        return ""
    return value


def _short(value: str | None, limit: int = 40) -> str:
    if value is None:
        return "None"
    if len(value) <= limit:
        return repr(value)
    return repr(value[: limit // 2]) + f"...({len(value)} chars)..." + repr(value[-limit // 2 :])
