"""Data-driven scenarios for the Raft core, in the spirit of etcd-io/raft's
``testdata/*.txt`` (cockroachdb/datadriven + ``rafttest.InteractionEnv``).

A scenario file is a sequence of blocks separated by blank lines::

    # a comment (only between blocks)
    command arg1 arg2 key=value
    ----
    expected output, one or more lines (a command with nothing to say
    prints "ok")

Arguments are split like a shell (``propose 1 "two words"``). The commands
drive a ``tests.raft.core_harness.Network``: every core is driven by the
one ``ReadyProcessor`` (writes durable at once), and messages wait in the
network's queue until a ``deliver-msgs``/``stabilize`` hands them over, so
a scenario controls exactly which message arrives when.

Commands (ids are node ids, 1..N):

* ``add-nodes N [key=value ...]``: create nodes 1..N (once per file). Keys
  are ``raft.core.Config`` fields with dashes (``pre-vote``,
  ``check-quorum``, ``election-jitter``, ``snapshot-chunk-size``, ...);
  ``election``/``heartbeat`` are short for ``election-tick``/
  ``heartbeat-tick``; ``seed`` seeds the cores' Randoms.
* ``campaign ID``; ``propose ID DATA``; ``read-index ID CTX``;
  ``transfer-leader FROM TO``: the core's client calls.
* ``tick ID [N]``; ``tick-heartbeat ID...``; ``tick-election ID...``: N,
  ``heartbeat-tick`` or ``election-tick`` ticks (the ids in lockstep). Ticks
  deliver nothing. ``tick-election`` ends a leader lease and runs a
  leader's check-quorum round, but a follower's own timeout is drawn from
  ``[election-tick, election-tick + jitter)`` and need not fire (it is
  deterministic for a given ``seed``).
* ``process-ready ID...``: handle one Ready of each node: print it, write
  it, send its messages (into the queue), apply, advance.
* ``deliver-msgs ID...``: step the queued messages addressed to each node
  into it, printing them (``DROPPED`` when the link is cut).
  ``drop-msgs ID...``: discard them instead.
* ``stabilize [ID...]``: repeat process-ready and deliver-msgs (of the
  given nodes, default all) until nothing is left to do.
* ``isolate ID``; ``cut A B``; ``heal``: cut links (messages over a cut
  link are dropped when delivered); ``heal`` restores every link.
* ``compact ID [INDEX]``: the application snapshots node ID's state at
  INDEX (default: its applied index) and compacts the log up to it.
* ``restart ID``: crash and restart from what the node saved (messages
  queued to or from it are lost, and listed).
* ``status ID``, ``raft-log ID``, ``raft-state``: print state.

Notation: ``T/I`` is term/index, as in etcd (``log=1/2`` in an APPEND is
prevLogTerm 1, prevLogIndex 2; ``1/3 "x"`` is the entry at index 3 of term
1). Role changes appear as ``2 became FOLLOWER at term 1`` right after the
input that caused them (a term change alone counts).

Running with ``SCENARIO_REWRITE=1`` (or ``pytest --rewrite``) rewrites the
expected blocks from the actual output, like etcd's ``-rewrite``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from raft.core import Config, NotLeader, ProposalDropped, Ready
from raft.membership import Membership
from raft.progress import ProgressState
from raft.storage import StorageError
from raft.types import NONE, Entry, EntryType, Message, MessageType, Role
from tests.raft.core_harness import Network, decode_state, encode_state

__all__ = [
    "Block",
    "Mismatch",
    "ScenarioError",
    "format_entry",
    "format_message",
    "parse",
    "rewrite_requested",
    "run_file",
    "run_text",
]

SEPARATOR = "----"


class ScenarioError(Exception):
    """A malformed scenario file or command (not a wrong expectation)."""


# -- formatting ---------------------------------------------------------------


def _quote(data: bytes) -> str:
    return json.dumps(data.decode("latin-1"))


def format_entry(e: Entry) -> str:
    if e.type is EntryType.NOOP:
        return f"{e.term}/{e.index} NOOP"
    return f"{e.term}/{e.index} {_quote(e.data)}"


def _peers(peers: frozenset[int]) -> str:
    return "[" + " ".join(str(p) for p in sorted(peers)) + "]"


#: The fields each type's line shows (besides type, src, dst and term);
#: any other field that is not at its default is appended as ``name=value``,
#: so nothing a message carries can be hidden from a scenario by accident.
_SHOWN: dict[MessageType, frozenset[str]] = {
    MessageType.APPEND: frozenset({"log_term", "index", "commit", "entries"}),
    MessageType.APPEND_RESPONSE: frozenset({"index", "reject", "reject_hint", "reject_term"}),
    MessageType.VOTE: frozenset({"log_term", "index", "context"}),
    MessageType.PRE_VOTE: frozenset({"log_term", "index", "context"}),
    MessageType.VOTE_RESPONSE: frozenset({"reject"}),
    MessageType.PRE_VOTE_RESPONSE: frozenset({"reject"}),
    MessageType.HEARTBEAT: frozenset({"commit", "context"}),
    MessageType.HEARTBEAT_RESPONSE: frozenset({"context"}),
    MessageType.SNAPSHOT: frozenset({"snapshot", "offset", "data", "done"}),
    MessageType.SNAPSHOT_RESPONSE: frozenset({"snapshot", "offset"}),
    MessageType.TIMEOUT_NOW: frozenset(),
}
_ALWAYS = frozenset({"type", "src", "dst", "term", "reply_to"})


def format_message(m: Message) -> str:
    """One line: ``1->2 APPEND term=1 log=1/1 commit=1 entries=[1/2 "x"]``."""
    t = MessageType
    parts = [f"{m.src}->{m.dst} {m.type.name} term={m.term}"]
    if m.type is t.APPEND:
        parts.append(f"log={m.log_term}/{m.index} commit={m.commit}")
        if m.entries:
            parts.append("entries=[" + ", ".join(format_entry(e) for e in m.entries) + "]")
    elif m.type is t.APPEND_RESPONSE:
        parts.append(f"index={m.index}")
        if m.reject:
            parts.append(f"rejected hint={m.reject_hint} hint-term={m.reject_term}")
    elif m.type in (t.VOTE, t.PRE_VOTE):
        parts.append(f"log={m.log_term}/{m.index}")
    elif m.type in (t.VOTE_RESPONSE, t.PRE_VOTE_RESPONSE):
        parts.append("rejected" if m.reject else "granted")
    elif m.type is t.HEARTBEAT:
        parts.append(f"commit={m.commit}")
    elif m.type in (t.SNAPSHOT, t.SNAPSHOT_RESPONSE):
        meta = m.snapshot
        if meta is not None:
            parts.append(f"snap={meta.term}/{meta.index} peers={_peers(meta.membership.voters)}")
        parts.append(f"offset={m.offset}")
        if m.type is t.SNAPSHOT:
            parts.append(f"bytes={len(m.data)}")
            if m.done:
                parts.append("done")
    if m.context and "context" in _SHOWN[m.type]:
        parts.append(f"context={_quote(m.context)}")
    shown = _SHOWN[m.type] | _ALWAYS
    for f in dataclasses.fields(Message):
        if f.name not in shown:
            value = getattr(m, f.name)
            if value != f.default:
                parts.append(f"{f.name}={value!r}")
    return " ".join(parts)


def _format_ready(i: int, rd: Ready) -> list[str]:
    out = [f"> {i} handling Ready" + (" (must sync)" if rd.must_sync else "")]
    if rd.soft_state is not None:
        lead = rd.soft_state.leader
        out.append(
            f"  SoftState: role={rd.soft_state.role.name} "
            f"leader={'none' if lead == NONE else lead}"
        )
    if rd.hard_state is not None:
        hs = rd.hard_state
        vote = "none" if hs.vote == NONE else hs.vote
        out.append(f"  HardState: term={hs.term} vote={vote} commit={hs.commit}")
    if rd.snapshot is not None and not rd.snapshot.empty:
        meta = rd.snapshot.meta
        out.append(
            f"  Snapshot: {meta.term}/{meta.index} peers={_peers(meta.membership.voters)} "
            f"data={_quote(rd.snapshot.data)}"
        )
    for title, ents in (("Entries", rd.entries), ("CommittedEntries", rd.committed_entries)):
        if ents:
            out.append(f"  {title}:")
            out += [f"  {format_entry(e)}" for e in ents]
    if rd.read_states:
        out.append("  ReadStates:")
        out += [f"  index={r.index} context={_quote(r.context)}" for r in rd.read_states]
    for title, msgs in (
        ("Messages", rd.messages),
        ("Messages (after persist)", rd.messages_after_persist),
    ):
        if msgs:
            out.append(f"  {title}:")
            out += [f"  {format_message(m)}" for m in msgs]
    return out


# -- parsing ------------------------------------------------------------------


@dataclass
class Block:
    """One ``command / ---- / expected`` block of a scenario file."""

    line: int  # 1-based line of the command
    text: str  # the command line as written
    command: str
    args: list[str]
    kwargs: dict[str, str]
    expected: list[str]
    #: 0-based [start, end) of the expected lines in the file's lines.
    out_start: int
    out_end: int


def parse(text: str, name: str = "<scenario>") -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        raw = lines[i]
        if not raw.strip() or raw.lstrip().startswith("#"):
            i += 1
            continue
        line_no = i + 1
        try:
            words = shlex.split(raw)
        except ValueError as e:
            raise ScenarioError(f"{name}:{line_no}: {e}") from None
        if i + 1 >= len(lines) or lines[i + 1].strip() != SEPARATOR:
            raise ScenarioError(f"{name}:{line_no}: expected {SEPARATOR!r} after {raw!r}")
        start = end = i + 2
        while end < len(lines) and lines[end].strip():
            end += 1
        args: list[str] = []
        kwargs: dict[str, str] = {}
        for w in words[1:]:
            key, eq, value = w.partition("=")
            if eq and key and not key[0].isdigit():
                kwargs[key] = value
            else:
                args.append(w)
        blocks.append(
            Block(line_no, raw, words[0], args, kwargs, lines[start:end], start, end)
        )
        i = end
    return blocks


# -- interpreter --------------------------------------------------------------


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(Config)} - {"id", "peers", "rng", "applied"}
_ALIASES = {"election": "election_tick", "heartbeat": "heartbeat_tick"}


def _value(s: str) -> bool | int:
    if s in ("true", "false"):
        return s == "true"
    try:
        return int(s)
    except ValueError:
        raise ScenarioError(f"not a boolean or integer: {s!r}") from None


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ScenarioError(f"not an integer: {s!r}") from None


@dataclass
class Interpreter:
    net: Network | None = None
    #: (role, term) of each node as last reported.
    seen: dict[int, tuple[Role, int]] = field(default_factory=dict)

    # -- plumbing -------------------------------------------------------------

    @property
    def network(self) -> Network:
        if self.net is None:
            raise ScenarioError("no nodes yet: add-nodes first")
        return self.net

    def _ids(self, args: Sequence[str], default_all: bool = False) -> list[int]:
        net = self.network
        if not args:
            if default_all:
                return list(net.ids)
            raise ScenarioError("node id(s) expected")
        ids = [_int(a) for a in args]
        for i in ids:
            if i not in net.cores:
                raise ScenarioError(f"no node {i}")
        return ids

    def _changes(self, ids: Sequence[int]) -> list[str]:
        """``N became ROLE at term T`` for each node whose role or term
        changed since last reported."""
        out = []
        for i in ids:
            core = self.network.cores[i]
            now = (core.role, core.term)
            if self.seen.get(i) != now:
                self.seen[i] = now
                out.append(f"{i} became {core.role.name} at term {core.term}")
        return out

    def run(self, block: Block) -> list[str]:
        handler = _COMMANDS.get(block.command)
        if handler is None:
            raise ScenarioError(f"unknown command {block.command!r}")
        if block.kwargs and block.command != "add-nodes":
            raise ScenarioError(f"unexpected key=value argument(s): {sorted(block.kwargs)}")
        return handler(self, block.args, block.kwargs)

    # -- driving --------------------------------------------------------------

    def process_ready(self, i: int) -> list[str]:
        rd = self.network.handle_ready(i)
        if rd is None:
            return []
        return _format_ready(i, rd) + [f"  {c}" for c in self._changes([i])]

    def deliver_msgs(self, i: int, drop: bool = False) -> list[str]:
        net = self.network
        msgs = net.take_queue(i)
        if not msgs:
            return []
        out = [f"> {i} {'dropping' if drop else 'receiving'} messages"]
        for m in msgs:
            line = f"  {format_message(m)}"
            if drop:
                out.append(line)
                continue
            if (m.src, m.dst) in net.cut_links:
                out.append(f"{line} DROPPED")
                continue
            out.append(line)
            net.deliver(m)
            out += [f"  {c}" for c in self._changes([i])]
        return out

    def stabilize(self, ids: Sequence[int], max_rounds: int = 10_000) -> list[str]:
        net = self.network
        out: list[str] = []
        for _ in range(max_rounds):
            done = True
            for i in ids:
                if net.cores[i].has_ready():
                    done = False
                    out += self.process_ready(i)
            for i in ids:
                if any(m.dst == i for m in net.queue):
                    done = False
                    out += self.deliver_msgs(i)
            if done:
                return out
        raise ScenarioError("stabilize: did not settle")

    def tick(self, ids: Sequence[int], n: int) -> list[str]:
        out: list[str] = []
        for _ in range(n):
            for i in ids:
                self.network.cores[i].tick()
                out += self._changes([i])
        return out


Handler = Callable[[Interpreter, list[str], dict[str, str]], list[str]]


def _add_nodes(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    if it.net is not None:
        raise ScenarioError("add-nodes: nodes exist already (once per file)")
    if len(args) != 1:
        raise ScenarioError("add-nodes N [key=value ...]")
    seed = 0
    cfg: dict[str, bool | int] = {}
    for key, raw in kwargs.items():
        if key == "seed":
            seed = _int(raw)
            continue
        name = _ALIASES.get(key, key.replace("-", "_"))
        if name not in _CONFIG_FIELDS:
            raise ScenarioError(f"add-nodes: unknown option {key!r}")
        cfg[name] = _value(raw)
    it.net = Network(range(1, _int(args[0]) + 1), seed=seed, **cfg)
    c = it.net.cores[1].config
    jitter = c.election_jitter or c.election_tick
    out = [
        f"nodes {' '.join(map(str, it.net.ids))}: election={c.election_tick} "
        f"(timeout drawn from [{c.election_tick}, {c.election_tick + jitter})) "
        f"heartbeat={c.heartbeat_tick} pre-vote={str(c.pre_vote).lower()} "
        f"check-quorum={str(c.check_quorum).lower()}"
    ]
    it._changes(it.net.ids)  # everyone starts a follower at term 0: not news
    return out


def _client_call(fn: Callable[[], object]) -> list[str]:
    try:
        result = fn()
    except (NotLeader, ProposalDropped, ValueError) as e:
        return [f"error: {type(e).__name__}: {e}"]
    return [] if result is None else [str(result)]


def _campaign(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    (i,) = it._ids(args)
    it.network.cores[i].campaign()
    return it._changes([i])


def _propose(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    if len(args) != 2:
        raise ScenarioError("propose ID DATA")
    (i,) = it._ids(args[:1])
    core = it.network.cores[i]
    return _client_call(lambda: f"index {core.propose(args[1].encode())}")


def _read_index(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    if len(args) != 2:
        raise ScenarioError("read-index ID CTX")
    (i,) = it._ids(args[:1])
    core = it.network.cores[i]
    return _client_call(lambda: core.read_index(args[1].encode()))


def _transfer_leader(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    if len(args) != 2:
        raise ScenarioError("transfer-leader FROM TO")
    frm, to = _int(args[0]), _int(args[1])
    it._ids([args[0]])
    core = it.network.cores[frm]
    return _client_call(lambda: core.transfer_leader(to))


def _tick(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    if not 1 <= len(args) <= 2:
        raise ScenarioError("tick ID [N]")
    ids = it._ids(args[:1])
    return it.tick(ids, _int(args[1]) if len(args) == 2 else 1)


def _tick_every(attr: str) -> Handler:
    def handler(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
        ids = it._ids(args)
        return it.tick(ids, getattr(it.network.cores[ids[0]].config, attr))

    return handler


def _process_ready(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    out: list[str] = []
    for i in it._ids(args):
        out += it.process_ready(i)
    return out


def _deliver_msgs(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    out: list[str] = []
    for i in it._ids(args):
        out += it.deliver_msgs(i)
    return out


def _drop_msgs(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    out: list[str] = []
    for i in it._ids(args):
        out += it.deliver_msgs(i, drop=True)
    return out


def _stabilize(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    return it.stabilize(it._ids(args, default_all=True))


def _isolate(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    (i,) = it._ids(args)
    it.network.isolate(i)
    return []


def _cut(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    a, b = it._ids(args)
    it.network.cut(a, b)
    return []


def _heal(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    it.network.heal()
    return []


def _compact(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    if not 1 <= len(args) <= 2:
        raise ScenarioError("compact ID [INDEX]")
    net = it.network
    (i,) = it._ids(args[:1])
    storage = net.storages[i]
    index = _int(args[1]) if len(args) == 2 else net.applied_index[i]
    if index > net.applied_index[i]:
        raise ScenarioError(f"compact: {i} has applied only {net.applied_index[i]}")
    # The state machine's state at ``index``: the stored snapshot's plus the
    # normal entries after it.
    base = storage.snapshot()
    try:
        tail = storage.entries(base.meta.index + 1, index + 1)
        state = decode_state(base.data) + [e.data for e in tail if e.type is EntryType.NORMAL]
        storage.create_snapshot(index, encode_state(state), Membership.of(net.ids))
        storage.compact(index)
    except StorageError as e:
        return [f"error: {type(e).__name__}: {e}"]
    log = net.cores[i].log
    return [
        f"{i}: snapshot at {storage.snapshot().meta.term}/{index}, "
        f"log now {log.first_index()}..{log.last_index()}"
    ]


def _restart(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    (i,) = it._ids(args)
    net = it.network
    lost = [m for m in net.queue if i in (m.src, m.dst)]
    net.restart(i)
    return [
        *(f"lost in flight: {format_message(m)}" for m in lost),
        *it._changes([i]),
        *_state_line(it, i),
    ]


def _state_line(it: Interpreter, i: int) -> list[str]:
    core = it.network.cores[i]
    st = core.status()
    lead = "none" if st.leader == NONE else st.leader
    vote = "none" if st.vote == NONE else st.vote
    return [
        f"{i}: {st.role.name} term={st.term} vote={vote} leader={lead} "
        f"commit={st.commit} applied={st.applied} last={core.log.last_term()}/{st.last_index}"
    ]


def _status(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    (i,) = it._ids(args)
    net = it.network
    st = net.cores[i].status()
    out = _state_line(it, i)
    if st.lead_transferee != NONE:
        out.append(f"  transferring leadership to {st.lead_transferee}")
    for p, pr in sorted(st.progress.items()):
        if p == i:
            out.append(f"  {p}: match={pr.match} (self)")
            continue
        extra = " active" if pr.recent_active else ""
        if pr.state is ProgressState.REPLICATE:
            extra += f" inflight={pr.inflight}"
        out.append(f"  {p}: match={pr.match} next={pr.next} {pr.state.name}{extra}")
    out.append(f"  applied data: [{', '.join(_quote(a) for a in net.applied[i])}]")
    return out


def _raft_log(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    (i,) = it._ids(args)
    log = it.network.cores[i].log
    out = []
    first = log.first_index()
    if first > 1:
        out.append(f"snapshot {log.term(first - 1)}/{first - 1}")
    out += [format_entry(e) for e in log.all_entries()]
    return out or ["log is empty"]


def _raft_state(it: Interpreter, args: list[str], kwargs: dict[str, str]) -> list[str]:
    out: list[str] = []
    for i in it.network.ids:
        out += _state_line(it, i)
    return out


_COMMANDS: dict[str, Handler] = {
    "add-nodes": _add_nodes,
    "campaign": _campaign,
    "propose": _propose,
    "read-index": _read_index,
    "transfer-leader": _transfer_leader,
    "tick": _tick,
    "tick-heartbeat": _tick_every("heartbeat_tick"),
    "tick-election": _tick_every("election_tick"),
    "process-ready": _process_ready,
    "deliver-msgs": _deliver_msgs,
    "drop-msgs": _drop_msgs,
    "stabilize": _stabilize,
    "isolate": _isolate,
    "cut": _cut,
    "heal": _heal,
    "compact": _compact,
    "restart": _restart,
    "status": _status,
    "raft-log": _raft_log,
    "raft-state": _raft_state,
}


# -- running and checking -------------------------------------------------------


@dataclass
class Mismatch:
    name: str
    block: Block
    actual: list[str]

    def diff(self) -> str:
        b = self.block
        lines = difflib.unified_diff(
            b.expected,
            self.actual,
            fromfile=f"{self.name}:{b.line} expected ({b.text})",
            tofile="actual",
            lineterm="",
        )
        return "\n".join(lines)


def execute(blocks: Sequence[Block], name: str) -> list[list[str]]:
    """Run ``blocks`` in order; the actual output of each."""
    it = Interpreter()
    outputs = []
    for b in blocks:
        try:
            out = it.run(b)
        except ScenarioError as e:
            raise ScenarioError(f"{name}:{b.line}: {b.text}: {e}") from None
        out = out or ["ok"]
        if any(not line.strip() for line in out):
            raise ScenarioError(f"{name}:{b.line}: output has a blank line: {out}")
        outputs.append(out)
    return outputs


def run_text(text: str, name: str = "<scenario>") -> list[Mismatch]:
    """Run a scenario; the blocks whose output differs from the expected."""
    blocks = parse(text, name)
    outputs = execute(blocks, name)
    return [Mismatch(name, b, out) for b, out in zip(blocks, outputs, strict=True)
            if out != b.expected]


def rewrite_text(text: str, name: str = "<scenario>") -> str:
    """``text`` with every expected block replaced by the actual output."""
    blocks = parse(text, name)
    outputs = execute(blocks, name)
    lines = text.splitlines()
    for b, out in reversed(list(zip(blocks, outputs, strict=True))):
        lines[b.out_start : b.out_end] = out
    return "\n".join(lines) + "\n"


def rewrite_requested() -> bool:
    return os.environ.get("SCENARIO_REWRITE", "") not in ("", "0")


def run_file(path: Path, rewrite: bool = False) -> list[Mismatch]:
    """Check (or, with ``rewrite``, regenerate) one scenario file."""
    text = path.read_text(encoding="utf-8")
    if rewrite:
        new = rewrite_text(text, str(path))
        if new != text:
            path.write_text(new, encoding="utf-8")
        return []
    return run_text(text, str(path))
