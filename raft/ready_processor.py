"""``ReadyProcessor``: the one driver of ``Ready``'s ordering rule.

``RaftCore`` says what must happen and in which order (``raft.core.Ready``);
this class makes it happen, with no I/O of its own: it calls the storage,
the ``send`` function and the state machine hooks it is given. ``RaftNode``
(asyncio, real files and sockets), the simulator (a faulty in-memory
network) and the core test harness all drive their cores through it, so the
20,000 simulated seeds test the ordering the real node runs, not a model of
it (``tests/raft/test_one_driver.py`` fails if a driver grows its own).

A driver's loop, whatever its I/O::

    while processor.take():      # rules 1 and 4: send now, apply now
        pass
    if processor.write():        # rule 2: every taken Ready, in order
        storage.sync()           # inline, in a thread, or later: the driver's choice
    processor.synced()           # rules 3 and 5: send the promises, advance

A driver may keep taking Readys while a sync runs (a leader keeps
replicating, everyone keeps applying); it must not ``write`` again until it
has called ``synced`` for the writes before, because ``synced`` says that
*everything* written so far is durable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from raft.core import RaftCore, Ready
from raft.membership import Membership
from raft.types import Entry, HardState, Message, ReadState, Snapshot, SoftState

__all__ = ["ReadyHooks", "ReadyProcessor", "WritableStorage"]


class WritableStorage(Protocol):
    """The write side the processor needs (``raft.storage.Storage`` has it)."""

    def save(
        self,
        hard_state: HardState | None,
        entries: tuple[Entry, ...],
        snapshot: Snapshot | None = None,
        *,
        sync: bool = True,
    ) -> bool: ...


class ReadyHooks(Protocol):
    """What the host does with a Ready's parts (all called on the driver's
    thread, in Ready order)."""

    def send(self, msg: Message) -> None:
        """Send ``msg`` to its peer (never called for ``msg.dst == self``)."""

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the state machine with ``snapshot``'s."""

    def apply(self, entries: tuple[Entry, ...]) -> None:
        """Apply a Ready's committed entries, in order (no-op entries
        included: they advance the applied index only)."""

    def read_ready(self, read: ReadState) -> None:
        """A ReadIndex round finished: serve it once applied >= ``read.index``."""

    def role_changed(self, soft: SoftState) -> None:
        """Leader or role changed (after this Ready's entries were applied)."""

    def flush(self) -> None:
        """Put what ``send`` buffered on the wire (end of a batch of sends)."""

    def membership_changed(self, membership: Membership) -> None:
        """The membership in force changed (``Ready.membership``); called
        before this Ready's messages are sent, so a new member's address is
        known before the first message to it."""


class ReadyProcessor:
    """Runs ``core``'s Readys through ``hooks`` and ``storage`` (see module doc)."""

    def __init__(self, core: RaftCore, storage: WritableStorage, hooks: ReadyHooks) -> None:
        self.core = core
        self._storage = storage
        self._hooks = hooks
        #: Taken, not yet written / written, not yet known durable.
        self._unwritten: list[Ready] = []
        self._written: list[Ready] = []
        #: Counters (for metrics, benchmarks and tests).
        self.readies = 0
        self.writes = 0
        self.syncs = 0

    @property
    def has_unwritten(self) -> bool:
        return bool(self._unwritten)

    @property
    def in_flight(self) -> bool:
        """Some Ready was written (or taken) and is not yet advanced."""
        return bool(self._unwritten or self._written)

    def take(self) -> Ready | None:
        """Take the core's next Ready, if any, and do what its rule allows at
        once: send ``messages`` (1), restore and apply (4), report a role
        change; its writes wait for ``write``."""
        core = self.core
        if not core.has_ready():
            return None
        rd = core.ready()
        self.readies += 1
        hooks = self._hooks
        if rd.membership is not None:
            hooks.membership_changed(rd.membership)
        if rd.messages:
            send = hooks.send
            for msg in rd.messages:
                send(msg)
            hooks.flush()
        if rd.snapshot is not None and not rd.snapshot.empty:
            hooks.restore(rd.snapshot)
        if rd.committed_entries:
            hooks.apply(rd.committed_entries)
        for read in rd.read_states:
            hooks.read_ready(read)
        if rd.soft_state is not None:
            hooks.role_changed(rd.soft_state)
        self._unwritten.append(rd)
        return rd

    def write(self) -> bool:
        """Write every taken Ready's state, in order, without fsync (rule 2).
        True if the driver must ``sync`` the storage before ``synced``.
        Raises what the storage raises (the driver stops: fail-stop)."""
        if self._written:
            raise RuntimeError("write() before synced() of the previous writes")
        must_sync = False
        save = self._storage.save
        for rd in self._unwritten:
            snapshot = rd.snapshot if rd.snapshot is not None and not rd.snapshot.empty else None
            if rd.hard_state is not None or rd.entries or snapshot is not None:
                save(rd.hard_state, rd.entries, snapshot, sync=False)
                self.writes += 1
            must_sync = must_sync or rd.must_sync
        self._written, self._unwritten = self._unwritten, []
        if must_sync:
            self.syncs += 1
        return must_sync

    def synced(self) -> None:
        """Everything written is durable: send each Ready's
        ``messages_after_persist`` (3) and advance it (5), in order; a
        message to this node itself (a candidate's own vote) is stepped back
        into the core after its Ready is advanced."""
        written, self._written = self._written, []
        core = self.core
        hooks = self._hooks
        sent = False
        for rd in written:
            own: list[Message] = []
            for msg in rd.messages_after_persist:
                if msg.dst == core.id:
                    own.append(msg)
                else:
                    hooks.send(msg)
                    sent = True
            core.advance(rd)
            for msg in own:
                core.step(msg)
        if sent:
            hooks.flush()

    def run_until_idle(self, sync: Callable[[], None]) -> None:
        """Take, write, ``sync`` and advance until the core has nothing more:
        the whole rule, synchronously (the harness and single-threaded
        drivers)."""
        while True:
            while self.take() is not None:
                pass
            if not self._unwritten:
                return
            if self.write():
                sync()
            self.synced()
