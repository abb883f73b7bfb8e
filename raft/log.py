"""The core's view of the log: stable storage plus an unstable tail
(etcd ``log.go`` and ``log_unstable.go``).

::

    storage (persisted)              unstable (not yet handed to save)
    [first_index .. offset-1]        [offset .. last_index]   (+ maybe a snapshot)
       ^ compacted before this           ^ Ready.entries / Ready.snapshot

* ``committed``: highest index known committed (paper Figure 2, commitIndex).
* ``applied``: highest index the driver reported applied (lastApplied).
* ``applying``: highest index handed out in a Ready's ``committed_entries``
  but not yet acknowledged by ``advance`` (so a second Ready does not hand
  them out twice).

The storage is read-only here: the driver writes what ``Ready`` carries, and
``advance`` moves the boundary (``stable_to``). Compaction happens in the
storage behind the core's back; ``first_index`` is therefore always asked
from the storage, never cached.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.storage import CompactedError, LogStorage, UnavailableError, limit_size
from raft.types import Entry, Snapshot

__all__ = ["RaftLog", "Unstable"]


class Unstable:
    """Entries (and possibly one incoming snapshot) not yet persisted.
    ``entries[i]`` has index ``offset + i``.

    Some of them may be *in progress*: handed to the driver in a Ready whose
    write is not yet durable (etcd's ``offsetInProgress``). Those are not
    handed out again; they stay here, readable, until ``stable_to`` says
    the write is done. Entries from ``in_progress`` on are new."""

    __slots__ = ("entries", "in_progress", "offset", "snapshot", "snapshot_in_progress")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None
        self.in_progress = offset
        self.snapshot_in_progress = False

    def next_entries(self) -> list[Entry]:
        """Entries not handed out for persisting yet."""
        return self.entries[self.in_progress - self.offset:]

    def next_snapshot(self) -> Snapshot | None:
        """The snapshot, unless it was handed out already."""
        return None if self.snapshot_in_progress else self.snapshot

    def has_next(self) -> bool:
        return (self.offset + len(self.entries) > self.in_progress
                or (self.snapshot is not None and not self.snapshot_in_progress))

    def accept_in_progress(self) -> None:
        """Everything unstable was handed out in a Ready."""
        self.in_progress = self.offset + len(self.entries)
        self.snapshot_in_progress = self.snapshot is not None

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` were persisted. Ignored unless the entry at
        ``index`` still has ``term``: if the tail was overwritten (a new
        leader's entries) after the Ready was taken, what was persisted is not
        what we hold now, and the new entries must still be handed out."""
        # Same test as maybe_term(index) != term, for an index >= offset.
        i = index - self.offset
        if i < 0 or i >= len(self.entries) or self.entries[i].term != term:
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1
        self.in_progress = max(self.in_progress, self.offset)

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.meta.index + 1
        self.entries = []
        self.snapshot = snapshot
        self.in_progress = self.offset
        self.snapshot_in_progress = False

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces everything unstable, and (by moving offset back) tells
            # the driver to overwrite the stored suffix from ``after`` on.
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(entries)
        # Replaced entries that were in progress must be handed out again:
        # the write in flight will be overwritten by the next one.
        self.in_progress = min(self.in_progress, after)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applied = first - 1
        self.applying = first - 1

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, len(unstable)={len(self.unstable.entries)})"
        )

    # -- bounds and terms ---------------------------------------------------

    # first_index / last_index / term are asked many times per operation:
    # they inline Unstable.maybe_* (same logic) to save calls and Optionals.

    def first_index(self) -> int:
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.meta.index
        return self.storage.last_index()

    def persisted_index(self) -> int:
        """Highest index known to be on stable storage and part of this log
        (0 while an incoming snapshot awaits persistence)."""
        if self.unstable.snapshot is not None:
            return 0
        return self.unstable.offset - 1

    def term(self, index: int) -> int:
        """Term of ``index``; valid from ``first_index() - 1`` to
        ``last_index()``. Raises CompactedError / UnavailableError outside."""
        u = self.unstable
        i = index - u.offset
        if i >= 0:
            if i < len(u.entries):
                return u.entries[i].term
        elif u.snapshot is not None and u.snapshot.meta.index == index:
            return u.snapshot.meta.term
        if index < self.first_index() - 1:
            raise CompactedError(f"index {index} compacted (first is {self.first_index()})")
        # Below a non-empty unstable tail, the index cannot be past the end.
        if (i >= 0 or not u.entries) and index > self.last_index():
            raise UnavailableError(f"index {index} beyond last {self.last_index()}")
        return self.storage.term(index)

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (``last_index``, ``last_term``) is at least
        as up-to-date as ours (paper 5.4.1: later term wins; same term, longer
        log wins)."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    # -- reading entries ----------------------------------------------------

    def entries(self, lo: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries from ``lo`` to the end, at most ``max_bytes`` (but at least
        one). Raises CompactedError if ``lo`` is compacted."""
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo < self.first_index():
            raise CompactedError(f"index {lo} compacted (first is {self.first_index()})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} beyond last {self.last_index()}")
        if lo >= hi:
            return []
        offset = self.unstable.offset
        out: list[Entry] = []
        if lo < offset:
            out = self.storage.entries(lo, min(hi, offset), max_bytes)
            # Storage stopped early because of max_bytes: done.
            if len(out) < min(hi, offset) - lo:
                return out
        if hi > offset:
            tail = self.unstable.slice(max(lo, offset), hi)
            out = out + tail if out else tail
        return limit_size(out, max_bytes)

    def all_entries(self) -> list[Entry]:
        return self.entries(self.first_index())

    # -- writing ------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append (truncating any conflicting unstable/stable suffix)."""
        if not entries:
            return self.last_index()
        if entries[0].index - 1 < self.committed:
            raise RuntimeError(
                f"append at {entries[0].index} would overwrite committed {self.committed}"
            )
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry whose term disagrees with ours, or that we
        do not have yet; 0 if all of them are already in the log."""
        last = self.last_index()
        for e in entries:
            # Past our end is "not there yet": checked first, so that the
            # usual case (all new) does not raise and catch UnavailableError.
            if e.index > last or not self.match_term(e.index, e.term):
                return e.index
        return 0

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: Sequence[Entry]
    ) -> int | None:
        """AppendEntries receiver rules 2-5 (paper Figure 2). Returns the
        index of the last new entry, or None if the log does not contain an
        entry at ``index`` with ``log_term`` (rule 2: reply false)."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            # Rule 3: delete the conflicting entry and all that follow;
            # rule 4: append any new entries not already in the log.
            if conflict <= self.committed:
                raise RuntimeError(
                    f"entry {conflict} conflicts with committed entry (committed={self.committed})"
                )
            self.append(entries[conflict - (index + 1) :])
        # Rule 5: commitIndex = min(leaderCommit, index of last new entry).
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index <= self.committed:
            return
        if index > self.last_index():
            raise RuntimeError(f"commit {index} is beyond last index {self.last_index()}")
        self.committed = index

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise RuntimeError(f"applied {index} out of range [{self.applied}, {self.committed}]")
        self.applied = index
        self.applying = max(self.applying, index)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    # -- committed entries --------------------------------------------------

    def has_next_committed_entries(self) -> bool:
        if self.unstable.snapshot is not None:
            return False  # the snapshot must be installed first
        # Usually all committed entries are handed out already: answer that
        # without asking the storage for its first index.
        return self.committed > self.applying and self.committed >= self.first_index()

    def next_committed_entries(self, max_bytes: int | None = None) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        if not self.has_next_committed_entries():
            return []
        lo = max(self.applying + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_bytes)

    def accept_applying(self, index: int) -> None:
        self.applying = max(self.applying, index)

    # -- snapshots ----------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log with ``snapshot`` (InstallSnapshot receiver rules
        6-8): everything up to its index is committed."""
        self.committed = snapshot.meta.index
        self.unstable.restore(snapshot)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (etcd
        findConflictByTerm). The leader uses it with a follower's reject hint
        to skip every entry of a term the follower does not have."""
        index = min(index, self.last_index())
        first = self.first_index()
        while index >= first:
            if self.term(index) <= term:
                return index
            index -= 1
        return max(index, first - 1)

    def first_index_of_term(self, index: int, floor: int) -> int:
        """The first index of the run of entries ending at ``index`` that share
        its term, not going below ``floor`` (the follower's fast back-up
        hint, dissertation 5.3 / paper 5.3 "optimization")."""
        t = self.term(index)
        first = max(self.first_index(), floor)
        while index > first and self.term(index - 1) == t:
            index -= 1
        return index
