"""A tiny in-memory network of RaftCores for the core's unit/scenario tests.

Deliberately minimal (the faulty-network simulator lives in tests/sim/):
FIFO delivery, links that can be cut, an optional drop filter, ticks, and
each core driven by the one ``ReadyProcessor`` (writes durable at once),
with an "applied" list per node as the state machine (its snapshot is that
list, JSON-encoded).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from random import Random
from typing import Any

from raft.core import Config, RaftCore, Ready
from raft.membership import Membership
from raft.ready_processor import ReadyProcessor
from raft.storage import MemoryStorage
from raft.types import (
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)


def encode_state(applied: list[bytes]) -> bytes:
    return json.dumps([a.decode("latin-1") for a in applied]).encode()


def decode_state(data: bytes) -> list[bytes]:
    return [a.encode("latin-1") for a in json.loads(data.decode())] if data else []


class Network:
    def __init__(self, ids: Iterable[int], *, seed: int = 0, **cfg: Any) -> None:
        self.ids = sorted(ids)
        #: The bootstrap voters; a node added later (``add_node``) starts
        #: knowing no membership, as a joining server does.
        self.bootstrap = frozenset(self.ids)
        self.cfg = cfg
        self.seed = seed
        self.storages: dict[int, MemoryStorage] = {i: MemoryStorage() for i in self.ids}
        self.cores: dict[int, RaftCore] = {}
        self.applied: dict[int, list[bytes]] = {i: [] for i in self.ids}
        self.applied_index: dict[int, int] = {i: 0 for i in self.ids}
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.ids}
        self.queue: list[Message] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.drop: Callable[[Message], bool] | None = None
        #: Rewrites a message in flight (a test's scalpel); None drops it.
        self.mutate: Callable[[Message], Message | None] | None = None
        self.delivered = 0
        self.processors: dict[int, ReadyProcessor] = {}
        for i in self.ids:
            self.cores[i] = self._new_core(i)

    def _new_core(self, i: int, applied: int = 0) -> RaftCore:
        config = Config(
            id=i,
            peers=self.bootstrap if i in self.bootstrap else frozenset(),
            rng=Random(self.seed * 1000 + i),
            applied=applied,
            **self.cfg,
        )
        return RaftCore(config, self.storages[i])

    # -- driver loop -----------------------------------------------------------

    def processor(self, i: int) -> ReadyProcessor:
        """Node ``i``'s driver (a new one whenever its core was replaced)."""
        proc = self.processors.get(i)
        if proc is None or proc.core is not self.cores[i]:
            proc = self.processors[i] = ReadyProcessor(
                self.cores[i], self.storages[i], _Hooks(self, i))
        return proc

    def handle_ready(self, i: int) -> Ready | None:
        """Take one Ready of node ``i`` and carry it out, its write durable at once."""
        proc = self.processor(i)
        rd = proc.take()
        if rd is None:
            return None
        if proc.write():
            self.storages[i].sync()
        proc.synced()
        return rd

    def flush(self) -> None:
        """Process every pending Ready (no delivery)."""
        progress = True
        while progress:
            progress = False
            for i in self.ids:
                if self.handle_ready(i) is not None:
                    progress = True

    def flush_nodes(self, ids: Iterable[int]) -> None:
        """Process the pending Readys of ``ids`` only (no delivery)."""
        for i in ids:
            while self.handle_ready(i) is not None:
                pass

    def take_queue(self, dst: int) -> list[Message]:
        """Remove and return the queued messages addressed to ``dst``."""
        out = [m for m in self.queue if m.dst == dst]
        self.queue = [m for m in self.queue if m.dst != dst]
        return out

    def take_messages(self) -> list[Message]:
        self.flush()
        out, self.queue = self.queue, []
        return out

    def deliver(self, m: Message) -> None:
        if (m.src, m.dst) in self.cut_links or (self.drop is not None and self.drop(m)):
            return
        if self.mutate is not None:
            changed = self.mutate(m)
            if changed is None:
                return
            m = changed
        self.delivered += 1
        self.cores[m.dst].step(m)

    def stabilize(self, max_steps: int = 100_000) -> None:
        """Deliver until quiet."""
        for _ in range(max_steps):
            self.flush()
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for m in batch:
                self.deliver(m)
        raise AssertionError("network did not stabilize")

    def tick(self, ids: Iterable[int] | None = None, n: int = 1) -> None:
        for _ in range(n):
            for i in ids if ids is not None else self.ids:
                self.cores[i].tick()
            self.stabilize()

    def add_node(self, i: int) -> RaftCore:
        """Start a new, empty node ``i`` (to be added as a learner)."""
        self.ids = sorted({*self.ids, i})
        self.storages[i] = MemoryStorage()
        self.applied[i] = []
        self.applied_index[i] = 0
        self.read_states[i] = []
        self.cores[i] = self._new_core(i)
        return self.cores[i]

    # -- faults ------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, i: int) -> None:
        for j in self.ids:
            if j != i:
                self.cut(i, j)

    def heal(self) -> None:
        self.cut_links.clear()
        self.drop = None
        self.mutate = None

    def restart(self, i: int) -> None:
        """Crash and restart ``i``: keep only what was saved to its storage."""
        self.queue = [m for m in self.queue if m.dst != i and m.src != i]
        snap = self.storages[i].snapshot()
        self.applied[i] = decode_state(snap.data)
        self.applied_index[i] = snap.meta.index
        self.cores[i] = self._new_core(i)

    # -- helpers -------------------------------------------------------------------

    def elect(self, i: int) -> RaftCore:
        self.cores[i].campaign()
        self.stabilize()
        assert self.cores[i].role is Role.LEADER, self.cores[i]
        return self.cores[i]

    def leader(self) -> RaftCore | None:
        leaders = [c for c in self.cores.values() if c.role is Role.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda c: c.term)

    def propose(self, i: int, data: bytes) -> int:
        index = self.cores[i].propose(data)
        self.stabilize()
        return index

    def log_terms(self, i: int) -> list[int]:
        return [e.term for e in self.cores[i].log.all_entries()]


class _Hooks:
    """Node ``i``'s state machine (a list of applied data) and outbox."""

    def __init__(self, net: Network, i: int) -> None:
        self.net = net
        self.i = i

    def send(self, msg: Message) -> None:
        self.net.queue.append(msg)

    def restore(self, snapshot: Snapshot) -> None:
        self.net.applied[self.i] = decode_state(snapshot.data)
        self.net.applied_index[self.i] = snapshot.meta.index

    def apply(self, entries: tuple[Entry, ...]) -> None:
        net, i = self.net, self.i
        for entry in entries:
            assert entry.index == net.applied_index[i] + 1, (i, entry.index,
                                                             net.applied_index[i])
            net.applied_index[i] = entry.index
            if entry.type is EntryType.NORMAL:
                net.applied[i].append(entry.data)

    def read_ready(self, read: ReadState) -> None:
        self.net.read_states[self.i].append(read)

    def role_changed(self, soft: SoftState) -> None:
        pass

    def flush(self) -> None:
        pass

    def membership_changed(self, membership: Membership) -> None:
        pass


class Outbox:
    """Hooks that keep what was sent (a lone core's driver in rule tests)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.applied: list[Entry] = []
        self.reads: list[ReadState] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def restore(self, snapshot: Snapshot) -> None:
        pass

    def apply(self, entries: tuple[Entry, ...]) -> None:
        self.applied.extend(entries)

    def read_ready(self, read: ReadState) -> None:
        self.reads.append(read)

    def role_changed(self, soft: SoftState) -> None:
        pass

    def flush(self) -> None:
        pass

    def membership_changed(self, membership: Membership) -> None:
        pass


def drive(core: RaftCore) -> list[Message]:
    """Run ``core``'s Readys through the shared driver until it is idle,
    each write durable at once; the messages sent, in order."""
    storage = core.log.storage
    assert isinstance(storage, MemoryStorage)
    outbox = Outbox()
    ReadyProcessor(core, storage, outbox).run_until_idle(storage.sync)
    return outbox.sent


def set_log(net: Network, i: int, terms: list[int], term: int | None = None) -> None:
    """Give node ``i`` a persisted log with these entry terms (index 1..n)."""
    ents = [Entry(index=k + 1, term=t, data=f"{k + 1}@{t}".encode()) for k, t in enumerate(terms)]
    from raft.types import HardState

    last_term = terms[-1] if terms else 0
    net.storages[i] = MemoryStorage()
    net.storages[i].save(HardState(term=term if term is not None else last_term), ents)
    net.cores[i] = net._new_core(i)


def msgs_of(msgs: list[Message], type_: MessageType) -> list[Message]:
    return [m for m in msgs if m.type is type_]
