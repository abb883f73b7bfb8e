"""The size of the "raft state": bytes of log entries after the last
snapshot, which ``--max-raft-state`` bounds (the seed's maxraftstate). The
node snapshots once it passes the bound."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from raft.types import Entry

__all__ = ["RaftStateSize"]


class RaftStateSize:
    """Running total of ``Entry.size()`` of the entries written since the
    last snapshot; an entry written again at an index (a conflict) replaces
    the one before it."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._sizes: deque[tuple[int, int]] = deque()
        self.bytes = 0
        for entry in entries:
            self.written(entry)

    def written(self, entry: Entry) -> None:
        sizes = self._sizes
        # A stored entry at or after this index conflicted and is replaced.
        while sizes and sizes[-1][0] >= entry.index:
            self.bytes -= sizes.pop()[1]
        size = entry.size()
        sizes.append((entry.index, size))
        self.bytes += size

    def snapshotted(self, index: int) -> None:
        """Entries through ``index`` are in a snapshot: they no longer count."""
        sizes = self._sizes
        while sizes and sizes[0][0] <= index:
            self.bytes -= sizes.popleft()[1]
