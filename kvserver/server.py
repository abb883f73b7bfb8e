"""One KV node: storage + state machine + Raft node + RPC on one port.

``KvNode`` wires the parts together; it is what the ``kvserver`` command runs
and what in-process tests start. The node listens on its own config entry and
dials the others (``raftRpc`` for peers and ``KvServer`` for clients share
the port, as in the seed) at the addresses of the membership in force: the
config's until the log holds a configuration entry, the log's from then on
(a membership listener keeps the transport's peers in step). A node whose
own removal is committed sets ``removed``; ``kvserver`` then stops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvserver.config import ClusterConfig, NodeAddress
from kvserver.limits import Limits
from kvserver.lmdb_store import LmdbKvStore
from kvserver.resources import peer_reserve
from kvserver.seen import SeenMarker
from kvserver.service import KV_SERVICE, KvService
from kvserver.state_machine import DiskKvStateMachine
from raft.core import NotLeader
from raft.file_storage import FileStorage
from raft.membership import Membership, parse_address
from raft.node import NodeConfig, NodeStopped, RaftNode
from raft.snapshot_stream import SnapshotReceiver, SnapshotSender
from raft.storage import StorageError
from raft.transport import RAFT_SERVICE, RaftService, RpcTransport
from rpc import RpcProvider

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_RAFT_STATE", "KvNode", "KvNodeOptions"]

#: Bytes of log entries after which a node compacts its log (snapshot file
#: of the store, then the log before it dropped): bounds the WAL and the
#: replay at restart. etcd's default is 100,000 entries (~10 MB of 100-byte
#: puts); this is a few times that.
DEFAULT_MAX_RAFT_STATE = 64 << 20

#: Seconds a client connection may stay silent (no request, none in flight)
#: before the node closes it. Long enough that a clerk in use never notices
#: (it sends within milliseconds; an idle one reconnects on its next call),
#: short enough that forgotten sockets give their descriptors back. Peer
#: connections are exempt: a follower's connection to its leader can stay
#: silent between elections.
DEFAULT_IDLE_TIMEOUT = 300.0

log = logging.getLogger("kvserver.server")

#: The loop watchdog wakes this often (seconds) and warns when a wake-up
#: came later than ``LOOP_STALL_WARNING`` seconds: a step of the event loop
#: held it that long (heartbeats and every request waited meanwhile).
LOOP_WATCH_INTERVAL = 0.05
LOOP_STALL_WARNING = 0.1
#: Seconds between full garbage collections when no compaction came first.
FULL_GC_INTERVAL = 300.0


def collect_old_objects_only_when_told() -> None:
    """Process-wide: stop Python's cyclic GC from scanning the oldest
    generation on its own. Its full passes walk every live object, and the
    Raft log holds one per entry until it is compacted (--max-raft-state):
    a pass over 220,000 entries held the loop for 55 ms on an idle machine,
    over 100 ms under load. ``KvNode`` runs the full pass itself right
    after each compaction, when the log is smallest, and at least every
    ``FULL_GC_INTERVAL`` seconds. The young generations are still
    collected automatically (cheap: they hold only recent objects)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1 << 30)


@dataclass(frozen=True)
class KvNodeOptions:
    data_dir: str | Path
    #: Compact the log past this many bytes of entries (None: never).
    max_raft_state: int | None = DEFAULT_MAX_RAFT_STATE
    #: Writes are refused (NO_SPACE) once the store uses this many bytes
    #: (None: no quota); reads and deletes keep working.
    max_db_bytes: int | None = None
    #: Entries kept behind each snapshot for slightly lagging followers; small,
    #: so the data dir stays near --max-raft-state.
    snapshot_catchup_entries: int = 100
    request_timeout: float = 2.0
    #: Sizes a request may have (checked on arrival; kvserver/limits.py).
    limits: Limits = field(default_factory=Limits)
    #: Cap on client connections (None: no cap). Raft peers get
    #: ``peer_reserve(nodes)`` slots above it (kvserver/resources.py).
    max_client_connections: int | None = None
    #: Close client connections silent this long (seconds); None: never.
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    #: The bootstrap membership (the data dir's IDENTITY); ``Membership()``
    #: (empty) for a node that joined: it waits for the leader to send it
    #: the log or a snapshot. None: every node of the config is a voter, at
    #: its config address.
    membership: Membership | None = None
    #: The data dir's cluster ID (kvserver/identity.py), for Membership.
    cluster_id: str = ""
    #: Where to listen (kvserver --addr). None: this node's config entry.
    address: NodeAddress | None = None


class KvNode:
    def __init__(self, config: ClusterConfig, node_id: int, options: KvNodeOptions) -> None:
        self.config = config
        self.id = node_id
        self.address = options.address or config.node(node_id)
        self.options = options
        data_dir = str(options.data_dir)
        self.storage = FileStorage(data_dir)
        try:
            # The store's own files live beside the log, in the same data
            # dir (FileStorage holds its LOCK): kv/ (LMDB) and kv-snap/
            # (snapshot files, streamed to followers that need them).
            try:
                store = LmdbKvStore(f"{data_dir}/kv", discard_damaged=True)
            except OSError as e:
                raise StorageError(f"cannot open the store in {data_dir}/kv: {e}") from e
            self.state_machine = DiskKvStateMachine(store, f"{data_dir}/kv-snap")
        except BaseException:
            self.storage.close()
            raise
        try:
            ids = frozenset(n.id for n in config.nodes)
            self.node = RaftNode(
                NodeConfig(
                    id=node_id,
                    peers=ids,
                    # The config's bootstrap membership carries its
                    # addresses, so the first configuration entry (and
                    # ``member list``) has them all.
                    membership=options.membership if options.membership is not None
                    else Membership.of(ids, (), {n.id: str(n) for n in config.nodes}),
                    max_raft_state=options.max_raft_state,
                    snapshot_catchup_entries=options.snapshot_catchup_entries,
                ),
                self.storage,
                self.state_machine,
            )
        except BaseException:
            self.storage.close()
            self.state_machine.store.close()
            raise
        self.service = KvService(
            self.node,
            self.state_machine,
            address=str(self.address),
            request_timeout=options.request_timeout,
            limits=options.limits,
            max_db_bytes=options.max_db_bytes,
            cluster_id=options.cluster_id,
        )
        capped = options.max_client_connections is not None
        self.provider = RpcProvider(
            self.address.host,
            self.address.port,
            idle_timeout=options.idle_timeout,
            max_connections=options.max_client_connections,
            reserved_connections=peer_reserve(len(config.nodes)) if capped else 0,
            # Also set without a cap: peer connections are exempt from
            # idle_timeout.
            reserved_service=RAFT_SERVICE.full_name,
            max_frame_size=options.limits.max_frame_bytes,
        )
        self.provider.register(KV_SERVICE, self.service)
        self.provider.register(RAFT_SERVICE, RaftService(
            node_id, self.node.handle_request,
            SnapshotReceiver(node_id, self.state_machine.snapshot_dir)))
        self._started = False
        self._stopped = False
        #: The peer transport, once started.
        self.transport: RpcTransport | None = None
        # Whether the membership in force holds this node, and the index of
        # the configuration entry that took it out (0: none), see
        # ``_check_removed``. A node restarted with its removal in its log
        # is out as well: an earlier configuration it holds had it.
        self._member = node_id in self.node.membership.members
        self._removed_at = 0
        *earlier, (latest_index, _) = self.node.configurations()
        if not self._member and any(node_id in m.members for _, m in earlier):
            self._removed_at = latest_index
        #: Set once this node's removal from the cluster is committed: the
        #: ``kvserver`` command then stops (exit 0).
        self.removed = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._seen_marker: asyncio.Task[None] | None = None
        self._snapshots_seen = 0
        self._last_full_gc = 0.0
        #: The longest event loop stall seen (seconds), for Status and tests.
        self.max_loop_stall = 0.0

    async def start(self) -> None:
        """Listen, then start ticking. Raises OSError if the port is taken."""
        await self.provider.start()
        # The peers and their addresses come from the membership in force
        # (the log's, or the bootstrap one made of the config) and follow
        # it from then on: the log wins over the config file.
        transport = RpcTransport(
            self.id,
            self._peer_addresses(self.node.membership),
            deliver=self.node.step,
            unreachable=self.node.report_unreachable,
            max_frame_size=self.options.limits.max_frame_bytes,
        )
        transport.snapshot_sender = SnapshotSender(
            self.id, self.state_machine, call=transport.stream_call,
            forward=transport.send_now, failed=self.node.report_snapshot_failed)
        self.transport = transport
        self.node.add_membership_listener(self._membership_changed)
        self.node.set_transport(transport)
        await self.node.start()
        self._started = True
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_loop())
        self._seen_marker = asyncio.get_running_loop().create_task(
            SeenMarker(self.node, self.state_machine).run())
        log.info("node %d serving on %s (data dir %s)", self.id, self.address,
                 self.options.data_dir)

    def _peer_addresses(self, membership: Membership) -> dict[int, tuple[str, int]]:
        """Where to reach each member: its entry in this node's config file
        if it has one, else its address in ``membership``. The config wins
        for the members it names, so that nodes behind NAT or proxies may
        each hold a different address for the same peer (README, "Several
        machines"); a member added later is dialed where the log says."""
        config = {n.id: (n.host, n.port) for n in self.config.nodes}
        peers: dict[int, tuple[str, int]] = {}
        for member in membership.members:
            if member in config:
                peers[member] = config[member]
                continue
            text = membership.address(member)
            if text:
                try:
                    peers[member] = parse_address(text)
                except ValueError as exc:
                    log.warning("node %d: member %d: %s", self.id, member, exc)
        return peers

    def _membership_changed(self, membership: Membership) -> None:
        """A new membership is in force here (``RaftNode`` listener)."""
        if self.transport is not None:
            self.transport.set_peers(self._peer_addresses(membership))
        member = self.id in membership.members
        if self._member and not member:
            # Not yet final: the entry may be truncated away (then this
            # runs again with a membership that holds this node).
            self._removed_at = self.node.membership_index
        elif member:
            self._removed_at = 0
        self._member = member
        self._check_removed()

    def _check_removed(self) -> None:
        """Set ``removed`` once the entry that took this node out is
        committed (a removed leader has stepped down by then: the core
        does that as the entry commits, dissertation 4.2.2) and applied
        here: the state machine keeps its applied index on disk, so a
        restart knows the entry is committed (the cluster no longer
        talks to this node to say so). Only a node that was a member
        counts: a new node catching up passes through configurations from
        before it was added."""
        if not self._removed_at or self.removed.is_set():
            return
        if self.node.status().applied >= self._removed_at:
            log.info("node %d was removed from the cluster (membership index %d); stopping",
                     self.id, self._removed_at)
            self.removed.set()

    async def _watch_loop(self) -> None:
        """Warn when the event loop was held longer than LOOP_STALL_WARNING:
        nothing proportional to the data may run on it (issue 14), and this
        is how an operator (and the scale benchmark) sees one that does."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_WATCH_INTERVAL)
            now = loop.time()
            stall = now - before - LOOP_WATCH_INTERVAL
            if stall > self.max_loop_stall:
                self.max_loop_stall = stall
            if stall > LOOP_STALL_WARNING:
                log.warning("node %d: event loop held for %.0f ms", self.id, stall * 1e3)
            # The commit that finalizes a removal comes with no membership
            # change to report it: looked at here.
            self._check_removed()
            snapshots = self.node.metrics.snapshots_taken + self.node.metrics.snapshots_installed
            if snapshots != self._snapshots_seen or now - self._last_full_gc > FULL_GC_INTERVAL:
                # Right after a compaction the log is at its smallest: the
                # full pass (see collect_old_objects_only_when_told) is cheap.
                self._snapshots_seen, self._last_full_gc = snapshots, now
                gc.collect()

    async def hand_over_leadership(self) -> int | None:
        """If this node leads, transfer leadership to the most up-to-date
        follower (bounded by about an election timeout); the new leader's
        id, or None if there was nothing to hand over or it failed. Done
        before a graceful stop, as etcd does: the cluster then has a leader
        within a round trip instead of an election timeout (the seed's
        300-500 ms of refused writes)."""
        node = self.node
        if not self._started or not node.is_leader or len(node.membership.voters) < 2:
            return None
        start = time.monotonic()
        term = node.status().term
        try:
            new = await node.transfer_leadership()
        except (TimeoutError, ValueError, NotLeader, NodeStopped) as exc:
            log.warning("node %d: leadership transfer before stopping failed: %s",
                        self.id, exc)
            return None
        log.info("node %d handed leadership to node %d in %.1f ms (term %d -> %d)",
                 self.id, new, (time.monotonic() - start) * 1e3, term, node.status().term)
        return new

    async def stop(self) -> None:
        """Refuse new requests, stop Raft, close the port and the storage.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._watchdog, self._seen_marker):
            if task is not None:
                task.cancel()
        self.service.shutting_down = True
        await self.provider.close()
        if self._started:
            await self.node.stop()
        else:
            self.storage.close()
        self.state_machine.store.close()
