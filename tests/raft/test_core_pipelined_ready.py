"""Readys taken while an earlier one is still being written (``Ready``'s
rule): a leader keeps replicating while its own write is in flight
(dissertation 10.2.1), its entries count toward commit only once durable,
and nothing is handed out twice."""

from __future__ import annotations

from raft.log import Unstable
from raft.types import Entry, MessageType
from tests.raft.core_harness import Network


def test_followers_commit_while_the_leaders_write_is_in_flight() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    lead.propose(b"a")
    rd = lead.ready()  # taken, written "in a worker thread", not advanced yet
    assert [e.data for e in rd.entries] == [b"a"] and rd.must_sync
    index = rd.entries[0].index
    appends = [m for m in rd.messages if m.type is MessageType.APPEND]
    assert {m.dst for m in appends} == {2, 3}
    for m in appends:
        net.deliver(m)
    net.flush_nodes([2, 3])
    acks = net.take_queue(dst=1)
    # A proposal arriving meanwhile is sent at once, before any write of it.
    lead.propose(b"b")
    for m in acks:
        lead.step(m)
    part = lead.ready()
    # "a" is in flight: not handed out again; "b" is new.
    assert [e.data for e in part.entries] == [b"b"]
    # Both followers hold "a": committed without the leader's disk.
    assert [e.data for e in part.committed_entries] == [b"a"]
    assert part.committed_entries[0].index == index
    # "b" goes to both followers at once, before the leader has written it.
    sent_b = [m for m in part.messages if m.type is MessageType.APPEND and m.entries]
    assert sorted(m.dst for m in sent_b) == [2, 3]
    assert all([e.data for e in m.entries] == [b"b"] for m in sent_b)
    # The writes complete, in order.
    for r in (rd, part):
        net.storages[1].save(r.hard_state, r.entries, r.snapshot)
        lead.advance(r)
    nxt = lead.ready()
    assert not nxt.entries and not nxt.committed_entries  # each handed out exactly once


def test_the_leaders_own_unwritten_entry_does_not_count() -> None:
    """With one follower unreachable, the leader's unpersisted entry must not
    make a quorum: nothing commits until its Ready is advanced."""
    net = Network([1, 2, 3])
    lead = net.elect(1)
    lead.propose(b"a")
    rd = lead.ready()
    for m in rd.messages:
        if m.dst == 2:
            net.deliver(m)
    net.flush_nodes([2])
    for m in net.take_queue(dst=1):
        lead.step(m)
    index = rd.entries[0].index
    assert lead.log.committed < index
    assert not lead.ready().committed_entries
    net.storages[1].save(rd.hard_state, rd.entries, rd.snapshot)
    lead.advance(rd)  # now durable: leader + follower 2 are a quorum
    assert [e.data for e in lead.ready().committed_entries] == [b"a"]


def test_a_follower_acknowledges_only_after_its_write() -> None:
    net = Network([1, 2, 3])
    lead = net.elect(1)
    lead.propose(b"a")
    for m in lead.ready().messages:
        if m.dst == 2:
            net.deliver(m)
    rd = net.cores[2].ready()
    assert [e.data for e in rd.entries] == [b"a"] and rd.must_sync
    acks = [m for m in rd.messages_after_persist if m.type is MessageType.APPEND_RESPONSE]
    assert len(acks) == 1 and acks[0].index == rd.entries[-1].index
    assert not [m for m in rd.messages if m.type is MessageType.APPEND_RESPONSE]


def test_entries_replaced_while_in_flight_are_handed_out_again() -> None:
    """A follower's in-flight entries overwritten by a new leader's: the new
    ones are handed out, and the old write's completion marks nothing stable
    that is not (etcd's unstable.offsetInProgress)."""
    u = Unstable(offset=1)
    u.truncate_and_append([Entry(1, 1), Entry(2, 1), Entry(3, 1)])
    assert [e.index for e in u.next_entries()] == [1, 2, 3]
    u.accept_in_progress()  # handed out in a Ready, being written
    assert u.next_entries() == [] and not u.has_next()
    u.truncate_and_append([Entry(2, 2)])  # a new leader's entry replaces 2 and 3
    assert u.next_entries() == [Entry(2, 2)] and u.has_next()
    u.accept_in_progress()
    u.stable_to(3, 1)  # the first write completes: entry 3 of term 1 is gone
    assert u.offset == 1 and [e.term for e in u.entries] == [1, 2]
    u.stable_to(2, 2)  # the second completes
    assert u.offset == 3 and u.entries == [] and not u.has_next()
