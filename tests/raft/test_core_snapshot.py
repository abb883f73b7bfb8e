"""InstallSnapshot in chunks (paper 7, Figure 13; dissertation 5.3)."""

from __future__ import annotations

from raft.membership import Membership
from raft.progress import ProgressState
from raft.types import Message, MessageType, SnapshotMeta
from tests.raft.core_harness import Network, encode_state, set_log


def compact(net: Network, i: int) -> int:
    """The application on ``i`` snapshots at its applied index and compacts."""
    index = net.applied_index[i]
    net.storages[i].create_snapshot(index, encode_state(net.applied[i]), Membership.of(net.ids))
    net.storages[i].compact(index)
    return index


def lagging_follower(chunk: int = 64) -> Network:
    net = Network([1, 2, 3], snapshot_chunk_size=chunk)
    net.elect(1)
    net.isolate(3)
    for k in range(30):
        net.propose(1, b"value-%02d" % k)
    net.tick([1, 2])
    assert compact(net, 1) == 31
    assert net.cores[1].log.first_index() == 32  # read from storage dynamically
    return net


def test_follower_behind_compaction_gets_snapshot_in_chunks() -> None:
    net = lagging_follower()
    chunks: list[Message] = []

    def spy(m: Message) -> bool:
        if m.type is MessageType.SNAPSHOT:
            chunks.append(m)
        return False

    net.heal()
    net.drop = spy
    net.tick(n=30)
    size = len(net.storages[1].snapshot().data)
    assert len(chunks) == -(-size // 64) > 1
    assert [c.offset for c in chunks] == list(range(0, size, 64))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert net.storages[3].snapshot().meta.index == 31
    assert net.applied[3] == net.applied[1]
    assert net.cores[1].progress[3].state is ProgressState.REPLICATE
    net.propose(1, b"after")
    net.tick(n=2)
    assert net.applied[3][-1] == b"after" and net.applied[3] == net.applied[1]


def test_lost_chunk_is_resent_after_timeout() -> None:
    net = lagging_follower()
    lost: list[Message] = []

    def lose_second_chunk_once(m: Message) -> bool:
        if m.type is MessageType.SNAPSHOT and m.offset == 64 and not lost:
            lost.append(m)
            return True
        return False

    net.heal()
    net.drop = lose_second_chunk_once
    net.tick(n=30)
    assert lost
    assert net.storages[3].snapshot().meta.index == 31
    assert net.applied[3] == net.applied[1]


def test_lost_snapshot_response_is_recovered() -> None:
    net = lagging_follower()
    lost: list[Message] = []

    def lose_response(m: Message) -> bool:
        if m.type is MessageType.SNAPSHOT_RESPONSE and len(lost) < 2:
            lost.append(m)
            return True
        return False

    net.heal()
    net.drop = lose_response
    net.tick(n=30)
    assert len(lost) == 2
    assert net.applied[3] == net.applied[1]


def test_follower_restart_mid_transfer_restarts_from_zero() -> None:
    net = lagging_follower()
    net.heal()
    net.tick([1])  # first chunk goes out
    net.flush()
    net.restart(3)  # the buffered chunks are lost with the process
    net.tick(n=30)
    assert net.applied[3] == net.applied[1]


def test_stale_snapshot_is_answered_with_commit() -> None:
    net = lagging_follower()
    net.heal()
    net.tick(n=30)
    follower = net.cores[3]
    meta = net.storages[1].snapshot().meta
    follower.step(
        Message(MessageType.SNAPSHOT, 1, 3, follower.term, snapshot=meta, data=b"", done=True)
    )
    rd = follower.ready()
    assert rd.snapshot is None and rd.messages == ()
    (m,) = rd.messages_after_persist
    assert m.type is MessageType.APPEND_RESPONSE and m.index == follower.log.committed


def test_snapshot_restart_keeps_state() -> None:
    net = lagging_follower()
    net.heal()
    net.tick(n=30)
    net.restart(3)
    net.tick(n=5)
    assert net.applied[3] == net.applied[1]
    assert net.cores[3].log.first_index() == 32


def test_snapshot_matching_our_log_keeps_suffix_but_acks_only_snapshot_index() -> None:
    """Figure 13 rule 6: if we already hold the snapshot's last entry, keep
    the entries after it -- but they may conflict, so only ack up to it."""
    net = Network([1, 2, 3])
    set_log(net, 3, [1, 1, 1, 2, 2], term=2)
    follower = net.cores[3]
    meta = SnapshotMeta(index=3, term=1, membership=Membership.of(net.ids))
    follower.step(
        Message(MessageType.SNAPSHOT, 1, 3, 3, snapshot=meta, data=b"[]", offset=0, done=True)
    )
    rd = follower.ready()
    assert rd.snapshot is None  # nothing to install: the log has it
    (m,) = rd.messages_after_persist
    assert (m.type, m.index, m.reject) == (MessageType.APPEND_RESPONSE, 3, False)
    assert follower.log.committed == 3 and follower.log.last_index() == 5


def test_newer_snapshot_replaces_log_and_is_handed_to_driver() -> None:
    net = Network([1, 2, 3])
    set_log(net, 3, [1, 1, 2], term=2)
    follower = net.cores[3]
    meta = SnapshotMeta(index=10, term=3, membership=Membership.of(net.ids))
    follower.step(Message(MessageType.SNAPSHOT, 1, 3, 3, snapshot=meta, data=b"ab", offset=0))
    follower.step(
        Message(MessageType.SNAPSHOT, 1, 3, 3, snapshot=meta, data=b"cd", offset=2, done=True)
    )
    rd = follower.ready()
    assert rd.snapshot is not None and rd.snapshot.data == b"abcd" and rd.must_sync
    # A chunk's receipt promises nothing durable; the final answer does.
    assert [(m.type, m.offset) for m in rd.messages] == [(MessageType.SNAPSHOT_RESPONSE, 2)]
    assert [(m.type, m.index) for m in rd.messages_after_persist] == [
        (MessageType.APPEND_RESPONSE, 10)]
    assert rd.hard_state is not None and rd.hard_state.commit == 10
    assert rd.committed_entries == ()
    net.storages[3].save(rd.hard_state, rd.entries, rd.snapshot)
    follower.advance(rd)
    assert follower.log.applied == 10 and follower.log.first_index() == 11


def test_out_of_order_chunk_asks_for_the_missing_offset() -> None:
    net = Network([1, 2, 3])
    follower = net.cores[3]
    meta = SnapshotMeta(index=10, term=3, membership=Membership.of(net.ids))
    follower.step(Message(MessageType.SNAPSHOT, 1, 3, 3, snapshot=meta, data=b"ab", offset=0))
    follower.step(Message(MessageType.SNAPSHOT, 1, 3, 3, snapshot=meta, data=b"ef", offset=4))
    other = SnapshotMeta(index=12, term=3, membership=Membership.of(net.ids))
    follower.step(Message(MessageType.SNAPSHOT, 1, 3, 3, snapshot=other, data=b"x", offset=1))
    offsets = [m.offset for m in follower.ready().messages]
    assert offsets == [2, 2, 0]


def test_late_duplicate_first_chunk_does_not_deadlock_the_transfer() -> None:
    """Regression (found by the simulator): a delayed duplicate of the chunk
    at offset 0 arriving mid-transfer used to make the follower restart its
    buffer and ask for an offset behind the leader's, which the leader
    ignored forever. The follower keeps its buffer, and the leader follows
    whatever offset the follower asks for."""
    net = lagging_follower()
    first: list[Message] = []

    def duplicate_first_chunk_late(m: Message) -> bool:
        if m.type is MessageType.SNAPSHOT and m.dst == 3:
            if m.offset == 0 and not first:
                first.append(m)
            elif m.offset == 128 and len(first) == 1:
                first.append(m)
                net.cores[3].step(first[0])  # the late duplicate overtakes this chunk
        return False

    net.heal()
    net.drop = duplicate_first_chunk_late
    net.tick(n=30)
    assert len(first) == 2, "the scenario did not happen"
    assert net.storages[3].snapshot().meta.index == 31
    assert net.applied[3] == net.applied[1]


def test_a_failed_snapshot_is_replaced_by_the_newest_one() -> None:
    """The driver reports that a snapshot could not be sent (its file was
    replaced by a newer snapshot's): the leader probes again and sends its
    newest snapshot, instead of resending the old one forever."""
    net = lagging_follower()
    net.drop = lambda m: m.type is MessageType.SNAPSHOT  # the stream "fails"
    net.heal()
    net.drop = lambda m: m.type is MessageType.SNAPSHOT
    net.tick([1, 2], n=3)
    net.tick(n=3)
    assert net.cores[1].progress[3].state is ProgressState.SNAPSHOT
    assert net.cores[1].progress[3].pending_snapshot == 31
    for k in range(5):
        net.propose(1, b"more-%d" % k)
    assert compact(net, 1) == 36
    net.cores[1].report_snapshot_failed(3)
    assert net.cores[1].progress[3].state is ProgressState.PROBE
    sent: list[int] = []
    net.drop = lambda m: bool(m.type is MessageType.SNAPSHOT and m.snapshot is not None
                              and sent.append(m.snapshot.index))
    net.tick(n=30)
    assert sent and set(sent) == {36}
    assert net.storages[3].snapshot().meta.index == 36
    assert net.applied[3] == net.applied[1]
