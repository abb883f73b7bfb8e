"""The open-file budget of a ``kvserver`` process.

Every TCP connection holds a file descriptor, and so does the storage: the
WAL segment being written (and the next one while rotating), a snapshot's
temp file, the data dir opened for fsync, the LOCK file, files read to send
a snapshot or recover. If clients may take every descriptor, the next
snapshot fails with EMFILE and the storage, being fail-stop, takes the node
down. So connections are a bounded resource, split like this:

    soft RLIMIT_NOFILE  >=  in use at start (stdio, inherited)
                          + RUNTIME_FDS      (event loop, listening socket, logging, slack)
                          + STORAGE_FDS      (WAL, snapshots, dir fsync, LOCK)
                          + peers            (one outbound connection to each other node)
                          + peer_reserve()   (inbound slots only Raft peers may use)
                          + 1                (a refused connection, for an instant)
                          + max client connections

At start the process raises its soft limit to the hard one (as Go's runtime
does): the soft default of 1024 is a relic of select(); we use epoll.

Why storage never fails for lack of descriptors while any are held by
clients: the provider counts a connection from the moment accept() returns
it until its socket is closed, and closes an accepted socket that would
exceed ``max_connections + reserved`` before it does anything else, in the
same callback (rpc/provider.py). So at every instant inbound connections
hold at most ``max_client_connections + peer_reserve() + 1`` descriptors;
the node's outbound connections are one per peer (an ``RpcChannel`` dials
again only once its old connection is lost); and the rest of the process needs at
most ``RUNTIME_FDS + STORAGE_FDS`` beyond what it had at start. The sum is
within the limit (``check_budget`` refuses a cap that is not), so an open()
by the storage finds a free descriptor however many clients connect: the
ones over the cap are refused instead. (A connection that is refused,
or closed for idleness, costs the client a reconnect, never the node its
storage.) tests/e2e/test_connection_limits.py floods a node running under a
limit of 256 past its cap and checks it keeps writing and snapshotting.

The reserve for peers is there because peers and clients share one port: a
flood of client connections at the cap must not lock out a peer that
reconnects (after a restart or a network blip), or the cluster loses its
quorum to idle sockets. Slots above the client cap are admitted only to
connections whose first request is to the Raft service (rpc/provider.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass

__all__ = [
    "RUNTIME_FDS",
    "STORAGE_FDS",
    "FdBudget",
    "check_budget",
    "fds_in_use",
    "limit_text",
    "peer_reserve",
    "raise_open_file_limit",
]

#: Event loop (epoll, eventfd, io_uring, self-pipe), the listening socket,
#: the log file, modules imported lazily, with room to spare. A node in
#: service holds about 13 descriptors besides its connections.
RUNTIME_FDS = 32
#: At most a few at once (WAL segment and the next, snapshot temp file and
#: the one being read, data dir for fsync, LOCK); 16 leaves slack.
STORAGE_FDS = 16
#: Ceiling for the soft limit when the hard one is unlimited: Linux refuses
#: RLIM_INFINITY for RLIMIT_NOFILE (it is bounded by fs.nr_open).
_UNLIMITED_TARGET = 1 << 20


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit
    before and after, and the hard limit. Never fails: if the system says
    no, the limit stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _UNLIMITED_TARGET
    if soft != resource.RLIM_INFINITY and soft < target:
        # The system may say no (macOS caps at OPEN_MAX below an "unlimited"
        # hard limit): then the limit stays as it was.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    after, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, after, hard


def limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def fds_in_use() -> int:
    """Descriptors open now (0 where the platform does not say)."""
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            # listdir itself opens one while it runs, which it lists.
            return max(len(os.listdir(path)) - 1, 0)
        except OSError:
            continue
    return 0


def peer_reserve(nodes: int) -> int:
    """Inbound slots kept for Raft peers above the client cap: two per peer
    (its connection, and its new one while we have not yet seen the old
    one close), and two for connections probing them."""
    return 2 * max(nodes - 1, 0) + 2


@dataclass(frozen=True)
class FdBudget:
    """How a soft limit of ``limit`` descriptors is spent (see module doc)."""

    limit: int
    in_use: int
    nodes: int

    @property
    def reserved(self) -> int:
        """Descriptors not available to client connections."""
        return (self.in_use + RUNTIME_FDS + STORAGE_FDS + max(self.nodes - 1, 0)
                + peer_reserve(self.nodes) + 1)

    @property
    def max_clients(self) -> int:
        """The most client connections that fit (may be < 1: no room)."""
        return self.limit - self.reserved


def check_budget(budget: FdBudget, requested: int | None) -> int:
    """The client connection cap to use: ``requested``, or the most that
    fit when None. Raises ValueError (a one-line message) if it does not fit."""
    room = budget.max_clients
    if requested is None:
        if room < 1:
            raise ValueError(
                f"the open-file limit {budget.limit} is too low: {budget.reserved} descriptors "
                f"are kept for storage, peers and the runtime")
        return room
    if requested > room:
        raise ValueError(
            f"--max-client-connections {requested} does not fit under the open-file limit "
            f"{budget.limit} ({budget.reserved} kept for storage, peers and the runtime): "
            f"at most {max(room, 0)}")
    return requested
