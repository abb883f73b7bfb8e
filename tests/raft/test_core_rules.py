"""Paper Figure 2 ("Rules for servers", the RPC receiver rules) and 5.4,
one rule per test, by stepping single cores with hand-made messages."""

from __future__ import annotations

from random import Random
from typing import Any

import pytest

from raft.core import Config, RaftCore
from raft.storage import MemoryStorage
from raft.types import NONE, Entry, HardState, Message, Role
from raft.types import MessageType as MT
from tests.raft.core_harness import drive


def core(
    id: int = 1,
    peers: tuple[int, ...] = (1, 2, 3),
    terms: tuple[int, ...] = (),
    term: int | None = None,
    vote: int = NONE,
    **cfg: Any,
) -> RaftCore:
    s = MemoryStorage()
    ents = [Entry(index=i, term=t) for i, t in enumerate(terms, start=1)]
    t = term if term is not None else (terms[-1] if terms else 0)
    s.save(HardState(term=t, vote=vote), ents)
    return RaftCore(Config(id=id, peers=frozenset(peers), rng=Random(id), **cfg), s)


def out(c: RaftCore) -> list[Message]:
    """Run the shared driver until idle, writes durable at once; what it sent."""
    return drive(c)


def append(
    src: int, term: int, index: int, log_term: int, *ents: tuple[int, int], commit: int = 0
) -> Message:
    return Message(
        MT.APPEND,
        src,
        1,
        term,
        index=index,
        log_term=log_term,
        entries=tuple(Entry(i, t) for i, t in ents),
        commit=commit,
    )


def terms_of(c: RaftCore) -> list[int]:
    return [e.term for e in c.log.all_entries()]


def make_leader(c: RaftCore) -> None:
    """Elect ``c`` by feeding it granted votes."""
    c.campaign()
    for m in out(c):
        if m.type is MT.PRE_VOTE:
            c.step(Message(MT.PRE_VOTE_RESPONSE, m.dst, c.id, m.term))
    for m in out(c):
        if m.type is MT.VOTE:
            c.step(Message(MT.VOTE_RESPONSE, m.dst, c.id, m.term))
    assert c.role is Role.LEADER
    out(c)


# -- Rules for all servers ------------------------------------------------------------


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_higher_term_converts_to_follower(role: str) -> None:
    c = core(terms=(1,), term=1)
    if role == "candidate":
        c.campaign()
        c.step(Message(MT.PRE_VOTE_RESPONSE, 2, 1, 2))
        assert c.role is Role.CANDIDATE
    elif role == "leader":
        make_leader(c)
    out(c)
    c.step(append(3, 9, 0, 0))
    assert (c.role, c.term, c.leader) == (Role.FOLLOWER, 9, 3)


def test_higher_term_response_converts_leader_to_follower_without_leader() -> None:
    c = core(terms=(1,), term=1)
    make_leader(c)
    c.step(Message(MT.APPEND_RESPONSE, 2, 1, 7, index=1))
    assert (c.role, c.term, c.leader, c.vote) == (Role.FOLLOWER, 7, NONE, NONE)


# -- AppendEntries receiver -----------------------------------------------------------


def test_reply_false_if_term_lt_current_term() -> None:
    c = core(terms=(1, 2), term=3)
    c.step(append(2, 2, 2, 2, (3, 2)))
    msgs = out(c)
    # The stale leader learns our term (so it steps down); nothing appended.
    assert [(m.type, m.term, m.reject) for m in msgs] == [(MT.APPEND_RESPONSE, 3, False)]
    assert c.log.last_index() == 2


def test_stale_term_append_ignored_without_check_quorum_and_pre_vote() -> None:
    c = core(terms=(1, 2), term=3, check_quorum=False, pre_vote=False)
    c.step(append(2, 2, 2, 2, (3, 2)))
    assert out(c) == [] and c.log.last_index() == 2


def test_reply_false_if_log_doesnt_contain_prev_entry() -> None:
    c = core(terms=(1, 1, 2), term=3)
    c.step(append(2, 3, 3, 3, (4, 3)))  # index 3 has term 2, not 3
    (m,) = out(c)
    assert m.type is MT.APPEND_RESPONSE and m.reject and m.index == 3
    # Fast back-up hint: first index of the conflicting term, and that term.
    assert (m.reject_hint, m.reject_term) == (3, 2)
    c.step(append(2, 3, 5, 3))  # our log is too short
    (m,) = out(c)
    assert m.reject and (m.reject_hint, m.reject_term) == (3, 0)


def test_conflicting_entry_deleted() -> None:
    c = core(terms=(1, 1, 2, 2), term=3)
    c.step(append(2, 3, 2, 1, (3, 3)))
    assert terms_of(c) == [1, 1, 3]
    rd = c.ready()
    # The driver is told to overwrite from index 3.
    assert [(e.index, e.term) for e in rd.entries] == [(3, 3)]


def test_append_new_entries() -> None:
    c = core(terms=(1,), term=1)
    c.step(append(2, 1, 1, 1, (2, 1), (3, 1)))
    (m,) = out(c)
    assert (m.type, m.reject, m.index) == (MT.APPEND_RESPONSE, False, 3)
    assert terms_of(c) == [1, 1, 1]


def test_append_already_present_entries_does_not_truncate() -> None:
    c = core(terms=(1, 1, 1), term=1)
    c.step(append(2, 1, 0, 0, (1, 1)))  # an old, reordered APPEND
    (m,) = out(c)
    assert m.index == 1 and c.log.last_index() == 3


def test_leader_commit_sets_follower_commit() -> None:
    c = core(terms=(1,), term=1)
    c.step(append(2, 1, 1, 1, (2, 1), (3, 1), commit=5))
    assert c.log.committed == 3  # min(leaderCommit, index of last new entry)
    c.step(append(2, 1, 1, 1, (2, 1), commit=2))
    assert c.log.committed == 3  # never decreases
    rd = c.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]


def test_heartbeat_commit_is_min_of_match_and_commit() -> None:
    c = core(terms=(1,), term=1)
    make_leader(c)
    # Follower 2 acked everything, follower 3 nothing.
    c.step(Message(MT.APPEND_RESPONSE, 2, 1, c.term, index=2))
    out(c)
    c.tick()
    hbs = {m.dst: m for m in out(c) if m.type is MT.HEARTBEAT}
    assert c.log.committed == 2
    assert hbs[2].commit == 2 and hbs[3].commit == 0


def test_append_response_waits_for_persistence() -> None:
    """The ack leaves in the same Ready as the entries it acknowledges."""
    c = core(terms=(1,), term=1)
    c.step(append(2, 1, 1, 1, (2, 1)))
    rd = c.ready()
    assert [e.index for e in rd.entries] == [2] and rd.must_sync
    assert [m.index for m in rd.messages_after_persist] == [2]
    assert rd.messages == ()  # nothing of it may leave before the write


# -- RequestVote receiver --------------------------------------------------------------


def vote_req(src: int, term: int, index: int, log_term: int, pre: bool = False) -> Message:
    return Message(MT.PRE_VOTE if pre else MT.VOTE, src, 1, term, index=index, log_term=log_term)


def test_vote_granted_only_once_per_term() -> None:
    c = core(terms=(1,), term=1, check_quorum=False)
    c.step(vote_req(2, 2, 1, 1))
    c.step(vote_req(3, 2, 1, 1))
    c.step(vote_req(2, 2, 1, 1))  # the same candidate again: still granted
    msgs = out(c)
    assert [(m.dst, m.reject) for m in msgs] == [(2, False), (3, True), (2, False)]
    assert c.vote == 2


def test_vote_denied_if_candidate_log_not_up_to_date() -> None:
    c = core(terms=(1, 2, 2), term=2, check_quorum=False)
    c.step(vote_req(2, 3, 5, 1))  # longer but older last term
    c.step(vote_req(3, 4, 2, 2))  # same last term, shorter
    assert [m.reject for m in out(c)] == [True, True]
    c.step(vote_req(2, 5, 1, 3))  # later last term wins
    assert [m.reject for m in out(c)] == [False]


def test_vote_grant_is_persisted_with_the_response() -> None:
    c = core(terms=(1,), term=1, check_quorum=False)
    c.step(vote_req(2, 2, 1, 1))
    rd = c.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (2, 2)
    assert rd.must_sync and rd.messages == ()
    assert [m.type for m in rd.messages_after_persist] == [MT.VOTE_RESPONSE]


def test_vote_in_lease_is_ignored_unless_transfer() -> None:
    c = core(terms=(1,), term=1)
    c.step(Message(MT.HEARTBEAT, 2, 1, 1))
    out(c)
    c.step(vote_req(3, 2, 1, 1))
    assert out(c) == [] and c.term == 1  # etcd "in lease": ignored entirely
    c.step(Message(MT.VOTE, 3, 1, 2, index=1, log_term=1, context=b"transfer"))
    (m,) = out(c)
    assert m.type is MT.VOTE_RESPONSE and not m.reject and c.term == 2


def test_pre_vote_does_not_change_term_or_vote() -> None:
    c = core(terms=(1,), term=1, check_quorum=False)
    c.step(vote_req(2, 2, 1, 1, pre=True))
    (m,) = out(c)
    assert m.type is MT.PRE_VOTE_RESPONSE and not m.reject and m.term == 2
    assert (c.term, c.vote) == (1, NONE)


def test_stale_pre_vote_is_rejected_with_our_term() -> None:
    c = core(terms=(1,), term=5)
    c.step(vote_req(2, 3, 1, 1, pre=True))
    (m,) = out(c)
    assert (m.type, m.reject, m.term) == (MT.PRE_VOTE_RESPONSE, True, 5)


# -- Candidates (5.2) ------------------------------------------------------------------------


def test_election_timeout_is_randomized_in_range() -> None:
    seen = set()
    for seed in range(40):
        s = MemoryStorage()
        c = RaftCore(Config(id=1, peers=frozenset({1, 2, 3}), rng=Random(seed), pre_vote=False), s)
        ticks = 0
        while c.role is Role.FOLLOWER:
            c.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 3


def test_candidate_becomes_leader_on_majority() -> None:
    c = core(peers=(1, 2, 3, 4, 5), pre_vote=False)
    c.campaign()
    assert c.role is Role.CANDIDATE and c.term == 1 and c.vote == 1
    reqs = out(c)
    assert sorted(m.dst for m in reqs if m.type is MT.VOTE) == [2, 3, 4, 5]
    c.step(Message(MT.VOTE_RESPONSE, 2, 1, 1))
    assert c.role is Role.CANDIDATE
    c.step(Message(MT.VOTE_RESPONSE, 3, 1, 1))
    assert c.role is Role.LEADER and c.leader == 1


def test_candidate_returns_to_follower_on_majority_rejection() -> None:
    c = core(pre_vote=False)
    c.campaign()
    c.step(Message(MT.VOTE_RESPONSE, 2, 1, 1, reject=True))
    c.step(Message(MT.VOTE_RESPONSE, 3, 1, 1, reject=True))
    assert c.role is Role.FOLLOWER and c.term == 1


def test_candidate_steps_down_on_append_from_leader_of_same_term() -> None:
    c = core(pre_vote=False)
    c.campaign()
    c.step(append(2, 1, 0, 0, (1, 1)))
    assert (c.role, c.leader, c.log.last_index()) == (Role.FOLLOWER, 2, 1)


def test_pre_candidate_keeps_term_until_pre_vote_majority() -> None:
    c = core(terms=(1,), term=1)
    c.campaign()
    assert c.role is Role.PRE_CANDIDATE and c.term == 1
    (m2, _m3) = [m for m in out(c) if m.type is MT.PRE_VOTE]
    assert m2.term == 2 and c.vote == NONE
    c.step(Message(MT.PRE_VOTE_RESPONSE, 2, 1, 2))
    assert c.role is Role.CANDIDATE and c.term == 2 and c.vote == 1


# -- Leaders (5.3, 5.4) ----------------------------------------------------------------------


def test_leader_appends_noop_of_its_term() -> None:
    c = core(terms=(1, 1), term=1)
    make_leader(c)
    last = c.log.all_entries()[-1]
    assert (last.index, last.term, last.data) == (3, c.term, b"")


def test_candidate_counts_its_own_vote_only_once_durable() -> None:
    c = core(peers=(1,))
    c.campaign()
    assert c.role is Role.CANDIDATE  # a majority of one, but not durable yet
    rd = c.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == 1 and rd.must_sync
    (own,) = rd.messages_after_persist
    assert (own.type, own.src, own.dst, own.term) == (MT.VOTE_RESPONSE, 1, 1, 1)
    c.log.storage.save(rd.hard_state, rd.entries)  # type: ignore[attr-defined]
    c.advance(rd)
    c.step(own)  # the driver steps it back once written (ReadyProcessor)
    assert c.role is Role.LEADER


def test_leader_counts_own_entries_only_after_persisting() -> None:
    c = core(peers=(1,))
    c.campaign()
    out(c)
    assert c.role is Role.LEADER
    noop = c.log.committed  # the leader's no-op, durable and committed
    idx = c.propose(b"x")
    assert c.log.committed == noop
    rd = c.ready()
    assert [e.index for e in rd.entries] == [idx] and rd.committed_entries == ()
    assert c.log.committed == noop
    c.log.storage.save(rd.hard_state, rd.entries)  # type: ignore[attr-defined]
    c.advance(rd)
    assert c.log.committed == idx


def test_leader_commits_only_current_term_entries() -> None:
    # Entries of term 1 on a majority do not commit by counting (5.4.2).
    c = core(terms=(1, 1), term=1)
    make_leader(c)  # term 2, noop at 3
    c.step(Message(MT.APPEND_RESPONSE, 2, 1, 2, index=2))
    assert c.log.committed == 0
    c.step(Message(MT.APPEND_RESPONSE, 2, 1, 2, index=3))
    assert c.log.committed == 3  # the term-2 noop commits everything before it


def test_not_leader_raises_with_hint() -> None:
    from raft.core import NotLeader

    c = core(terms=(1,), term=1)
    c.step(Message(MT.HEARTBEAT, 3, 1, 1))
    with pytest.raises(NotLeader) as exc:
        c.propose(b"x")
    assert exc.value.leader == 3
    with pytest.raises(NotLeader):
        c.read_index(b"r")
    with pytest.raises(NotLeader):
        c.transfer_leader(2)


def test_restart_restores_hard_state_and_log() -> None:
    s = MemoryStorage()
    s.save(HardState(term=4, vote=2, commit=2), [Entry(1, 1, b"a"), Entry(2, 4, b"b"), Entry(3, 4)])
    c = RaftCore(Config(id=1, peers=frozenset({1, 2, 3}), rng=Random(0), applied=1), s)
    assert (c.term, c.vote, c.role, c.log.committed, c.log.applied) == (4, 2, Role.FOLLOWER, 2, 1)
    rd = c.ready()
    assert rd.hard_state is None  # nothing changed
    assert [e.index for e in rd.committed_entries] == [2]


# -- Driver interface ------------------------------------------------------------------------


def test_status_reports_progress_on_leader() -> None:
    from raft.progress import ProgressState

    c = core(terms=(1,), term=1)
    make_leader(c)
    c.step(Message(MT.APPEND_RESPONSE, 2, 1, c.term, index=2))
    st = c.status()
    assert (st.id, st.role, st.leader, st.term, st.last_index, st.first_index) == (
        1,
        Role.LEADER,
        1,
        2,
        2,
        1,
    )
    assert st.progress[2].match == 2 and st.progress[2].state is ProgressState.REPLICATE
    assert st.progress[3].state is ProgressState.PROBE
    c.report_unreachable(2)
    assert c.status().progress[2].state is ProgressState.PROBE
    assert core().status().progress == {}


def test_committed_entries_handed_out_once_even_if_ready_called_twice() -> None:
    c = core(terms=(1, 1), term=1)
    c.step(append(2, 1, 2, 1, commit=2))
    first = c.ready()
    second = c.ready()
    assert [e.index for e in first.committed_entries] == [1, 2]
    assert second.committed_entries == () and second.messages == ()
    c.advance(first)
    c.advance(second)
    assert c.log.applied == 2 and not c.has_ready()


def test_has_ready_false_when_idle() -> None:
    c = core(terms=(1,), term=1)
    assert not c.has_ready()
    c.tick()
    assert not c.has_ready()


def test_soft_state_reported_on_change_only() -> None:
    c = core(peers=(1,))
    c.campaign()
    rd = c.ready()
    assert rd.soft_state is not None and rd.soft_state.role is Role.CANDIDATE
    c.log.storage.save(rd.hard_state, rd.entries)  # type: ignore[attr-defined]
    c.advance(rd)
    (own,) = rd.messages_after_persist
    c.step(own)
    rd = c.ready()
    assert rd.soft_state is not None and rd.soft_state.role is Role.LEADER
    c.log.storage.save(rd.hard_state, rd.entries)  # type: ignore[attr-defined]
    c.advance(rd)
    assert c.ready().soft_state is None
