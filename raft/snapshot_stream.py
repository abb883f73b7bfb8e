"""Streaming a state machine kept on disk to a follower that needs a
snapshot (the InstallSnapshot of an on-disk state machine).

A state machine whose snapshots are files (``FileSnapshots``, e.g. the
KV store's LMDB database) gives Raft a tiny ``Snapshot.data`` (a marker):
the core's SNAPSHOT message then fits one chunk, and the state itself
travels beside it, as etcd's rafthttp streams its bbolt database beside
the raft snapshot message:

1. The leader's core sends SNAPSHOT (index, term). ``SnapshotSender`` holds
   that message back and first asks the follower (``StreamSnapshot`` with
   ``probe``) whether it already holds a file for that snapshot.
2. If not, the sender streams the leader's file for that snapshot (written
   by ``FileSnapshots.save_snapshot`` in the storage worker when the log was
   compacted: a consistent copy of the state machine taken from a read
   transaction while the leader kept serving) in ``CHUNK_BYTES`` chunks,
   one in flight at a time (flow control: the next chunk leaves when the
   follower has written the last). The copy holds every entry applied when
   it was taken, at least through the snapshot's index; entries after that
   index are skipped by the follower's state machine when the log delivers
   them again (it knows its applied index).
3. ``SnapshotReceiver`` writes the chunks to ``<index>-<term>.snap.part``,
   checks size and CRC-32 at the end, and (in a worker thread) fsyncs it,
   copies it to ``<index>-<term>.snap.install`` (which the state machine
   consumes, in O(1), when it swaps the file in) and renames it to
   ``<index>-<term>.snap``: the follower's own snapshot file from then on.
4. Only then does the core's SNAPSHOT message leave. The follower's node
   passes it to its core only if it holds the ready file (else it ignores
   it, and the leader's core sends it again, which streams again), and its
   state machine swaps the file in when the core says to restore.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from raft import raft_pb2
from raft.fileio import OsFileSystem
from raft.types import Message, MessageType, SnapshotMeta

__all__ = ["CHUNK_BYTES", "FileSnapshots", "SnapshotReceiver", "SnapshotSender",
           "install_copy", "remove_older_snapshots", "snapshot_path"]

log = logging.getLogger("raft.snapshot_stream")

#: Bytes per StreamSnapshot call: large enough that the per-call cost is
#: noise, small enough that a chunk never holds the loop for long.
CHUNK_BYTES = 1 << 20

_SNAP_RE = re.compile(r"^(\d{20})-(\d{20})\.snap(\.install)?$")


@runtime_checkable
class FileSnapshots(Protocol):
    """A state machine whose snapshots are files rather than bytes: the
    file of snapshot ``meta`` is ``snapshot_path(snapshot_dir, meta)``, and
    its ``restore(data, meta)`` swaps that file in."""

    snapshot_dir: str

    def save_snapshot(self, meta: SnapshotMeta) -> int:
        """Write the file for ``meta``: a consistent copy of the whole
        state, which holds at least every entry through ``meta.index``,
        fsynced; return its size. Runs in the storage worker while the loop
        keeps applying."""


def _name(index: int, term: int) -> str:
    return f"{index:020d}-{term:020d}"


def snapshot_path(directory: str, meta: SnapshotMeta) -> str:
    """Where the file of snapshot ``meta`` lives in ``directory``."""
    return os.path.join(directory, _name(meta.index, meta.term) + ".snap")


def install_copy(path: str, source: str | None = None) -> str:
    """A copy of snapshot file ``path`` (read from ``source``, default
    ``path``) for the state machine to consume when it swaps it in
    (``path + ".install"``: written to a temporary name, fsynced, renamed),
    so that ``path`` itself stays this node's snapshot file. Made once; its
    path. O(size): off the loop, or at start."""
    install = path + ".install"
    if not os.path.exists(install):
        shutil.copyfile(source or path, install + ".tmp")
        with open(install + ".tmp", "rb+") as f:
            os.fsync(f.fileno())
        os.rename(install + ".tmp", install)
    return install


def remove_older_snapshots(directory: str, meta: SnapshotMeta) -> None:
    """Delete the snapshot files (and copies left to install) in
    ``directory`` older than ``meta``'s: only the newest is of any use."""
    keep = _name(meta.index, meta.term)
    for name in os.listdir(directory):
        if _SNAP_RE.match(name) and name.split(".")[0] < keep:
            os.remove(os.path.join(directory, name))


class SnapshotSender:
    """The leader's side: one stream per follower at a time."""

    def __init__(
        self,
        node_id: int,
        state_machine: FileSnapshots,
        *,
        call: Callable[[int, raft_pb2.SnapshotChunk], Awaitable[raft_pb2.SnapshotChunkReply]],
        forward: Callable[[Message], None],
        failed: Callable[[int], None],
    ) -> None:
        """``call`` makes one StreamSnapshot call to a peer (raises
        ``rpc.RpcError``); ``forward`` sends a core message as usual;
        ``failed`` tells the node a stream failed (the core then probes
        the peer and sends its newest snapshot: the file of the one that
        failed may be gone, replaced by a newer one)."""
        self._id = node_id
        self._dir = state_machine.snapshot_dir
        self._call = call
        self._forward = forward
        self._failed = failed
        self._streams: dict[int, tuple[SnapshotMeta, asyncio.Task[None]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft{node_id}-snapout")
        self._log = logging.LoggerAdapter(log, {"node_id": node_id})

    def send(self, msg: Message) -> None:
        """A SNAPSHOT message from the core: it leaves once the follower
        holds the state machine's file for it."""
        assert msg.type is MessageType.SNAPSHOT and msg.snapshot is not None
        running = self._streams.get(msg.dst)
        if running is not None and not running[1].done():
            if running[0] == msg.snapshot:
                return  # a resend while streaming: the stream sends it when done
            running[1].cancel()
        task = asyncio.get_running_loop().create_task(self._stream(msg))
        self._streams[msg.dst] = (msg.snapshot, task)

    async def _stream(self, msg: Message) -> None:
        meta = msg.snapshot
        assert meta is not None
        peer = msg.dst
        try:
            probe = await self._call(peer, self._chunk(msg, probe=True))
            if not probe.have:
                await self._send_file(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RpcError, OSError: the core will try again
            self._log.warning("node %d: snapshot %d/%d to node %d failed: %s", self._id,
                              meta.index, meta.term, peer, exc)
            self._failed(peer)
            return
        self._forward(msg)

    async def _send_file(self, msg: Message) -> None:
        meta = msg.snapshot
        assert meta is not None
        loop = asyncio.get_running_loop()
        # Open now: a newer snapshot may delete the name, not the open file.
        with open(snapshot_path(self._dir, meta), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._log.info("node %d: streaming snapshot %d/%d (%d bytes) to node %d", self._id,
                           meta.index, meta.term, size, msg.dst)
            offset, crc = 0, 0
            while True:
                data = await loop.run_in_executor(self._pool, f.read, CHUNK_BYTES)
                crc = zlib.crc32(data, crc)
                done = offset + len(data) >= size
                chunk = self._chunk(msg, offset=offset, data=data, done=done)
                if done:
                    chunk.size, chunk.crc32 = size, crc
                reply = await self._call(msg.dst, chunk)
                if reply.error:
                    raise RuntimeError(f"node {msg.dst} refused chunk at {offset}: "
                                       f"{reply.error}")
                offset += len(data)
                if reply.offset != offset:
                    raise RuntimeError(f"node {msg.dst} holds {reply.offset} bytes, "
                                       f"sent {offset}")
                if done:
                    return

    def _chunk(self, msg: Message, *, probe: bool = False, offset: int = 0, data: bytes = b"",
               done: bool = False) -> raft_pb2.SnapshotChunk:
        meta = msg.snapshot
        assert meta is not None
        return raft_pb2.SnapshotChunk(src=self._id, dst=msg.dst, term=msg.term,
                                      index=meta.index, snapshot_term=meta.term, probe=probe,
                                      offset=offset, data=data, done=done)

    async def close(self) -> None:
        tasks = [task for _, task in self._streams.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)


class SnapshotReceiver:
    """The follower's side: at most one file in progress; the newest ready
    file is kept until the state machine takes it."""

    def __init__(self, node_id: int, directory: str) -> None:
        self._id = node_id
        self._dir = directory
        self._lock = asyncio.Lock()
        self._part: tuple[str, int, int] | None = None  # (name, bytes, crc)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft{node_id}-snapin")
        self._log = logging.LoggerAdapter(log, {"node_id": node_id})
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".part"):  # a half-received file: start over
                os.remove(os.path.join(directory, name))

    def has(self, meta: SnapshotMeta) -> bool:
        """The whole file for ``meta`` is here, durable."""
        return os.path.exists(snapshot_path(self._dir, meta))

    async def chunk(self, req: raft_pb2.SnapshotChunk) -> raft_pb2.SnapshotChunkReply:
        """One StreamSnapshot call. Replies with the bytes held so far;
        ``error`` (and nothing written) for a chunk that does not follow."""
        meta = SnapshotMeta(index=req.index, term=req.snapshot_term)
        if req.probe:
            return raft_pb2.SnapshotChunkReply(have=self.has(meta))
        async with self._lock:
            name = _name(req.index, req.snapshot_term)
            part = os.path.join(self._dir, name + ".snap.part")
            if req.offset == 0:
                self._discard_part()
                self._part = (name, 0, 0)
                with open(part, "wb"):
                    pass
            if self._part is None or self._part[0] != name or self._part[1] != req.offset:
                held = self._part[1] if self._part is not None and self._part[0] == name else 0
                return raft_pb2.SnapshotChunkReply(
                    offset=held, error=f"expected offset {held}, got {req.offset}")
            with open(part, "ab") as f:
                f.write(req.data)
            size = req.offset + len(req.data)
            crc = zlib.crc32(req.data, self._part[2])
            self._part = (name, size, crc)
            if req.done:
                self._part = None
                if size != req.size or crc != req.crc32:
                    os.remove(part)
                    return raft_pb2.SnapshotChunkReply(
                        offset=0, error=f"snapshot file damaged in transit ({size} bytes, "
                                        f"expected {req.size}; crc {crc:#x}, {req.crc32:#x})")
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._make_ready, part, snapshot_path(self._dir, meta), meta)
                self._log.info("node %d: received snapshot %d/%d (%d bytes)", self._id,
                               req.index, req.snapshot_term, size)
            return raft_pb2.SnapshotChunkReply(offset=size)

    def _make_ready(self, part: str, ready: str, meta: SnapshotMeta) -> None:
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        # The copy first: once ``ready`` exists the node accepts the
        # snapshot, and restoring it consumes the copy.
        install_copy(ready, source=part)
        os.rename(part, ready)
        OsFileSystem().fsync_dir(self._dir)
        remove_older_snapshots(self._dir, meta)

    def _discard_part(self) -> None:
        if self._part is not None:
            path = os.path.join(self._dir, self._part[0] + ".snap.part")
            if os.path.exists(path):
                os.remove(path)
            self._part = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
