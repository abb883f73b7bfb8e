"""Membership change, one server at a time (dissertation chapter 4).

Learners replicate but never vote, campaign or count; promotion and removal
change the majority; at most one change is uncommitted; a new leader changes
nothing before it has committed an entry of its own term (Ongaro's 2015
correction, the last test shows what goes wrong without it); the membership
in force is the latest in the log, rolled back when its entry is truncated,
and carried by snapshots.
"""

from __future__ import annotations

import pytest

from raft.core import ConfChangeError, ConfChangeRefused, RaftCore
from raft.membership import ConfChange, ConfChangeOp, Membership
from raft.progress import ProgressState
from raft.types import EntryType, MessageType, Role
from tests.raft.core_harness import Network, encode_state
from tests.sim.checker import Checker, SafetyViolation

ADD, PROMOTE, REMOVE = ConfChangeOp.ADD_LEARNER, ConfChangeOp.PROMOTE, ConfChangeOp.REMOVE


def change(net: Network, leader: int, op: ConfChangeOp, node: int) -> int:
    index = net.cores[leader].propose_conf_change(ConfChange(op, node, f"h:{node}"))
    net.stabilize()
    return index


def committed_cluster(n: int = 3) -> Network:
    # Without check-quorum's leader lease, a test may elect another leader
    # at once (campaign) instead of ticking out the lease.
    net = Network(range(1, n + 1), check_quorum=False)
    net.elect(1)
    return net


def test_a_learner_replicates_but_neither_counts_nor_campaigns() -> None:
    net = committed_cluster()
    net.add_node(4)
    index = change(net, 1, ADD, 4)
    assert net.cores[1].log.committed >= index
    for i in net.ids:
        assert net.cores[i].membership == Membership.of({1, 2, 3}, {4}, {4: "h:4"})
    net.propose(1, b"x")
    assert net.applied[4] == net.applied[1] == [b"x"]
    # Two voters down: the learner does not make a majority.
    net.isolate(2)
    net.isolate(3)
    index = net.cores[1].propose(b"y")
    net.tick(n=3)
    assert net.cores[1].log.committed < index
    assert net.cores[4].log.last_index() >= index  # it has the entry all the same
    # A learner never campaigns, however long it hears nothing.
    net.heal()
    net.isolate(4)
    net.tick([4], n=100)
    assert net.cores[4].role is Role.FOLLOWER and net.cores[4].term == net.cores[1].term


def test_promotion_counts_toward_the_majority() -> None:
    net = committed_cluster()
    net.add_node(4)
    change(net, 1, ADD, 4)
    net.isolate(3)
    before = net.propose(1, b"1+2 of 3")
    assert net.cores[1].log.committed >= before
    net.heal()
    change(net, 1, PROMOTE, 4)
    # Voters {1,2,3,4}: 1 and 2 alone (two of four) no longer commit ...
    net.isolate(3)
    net.isolate(4)
    index = net.cores[1].propose(b"needs three")
    net.tick([1, 2], n=2)
    assert net.cores[1].log.committed < index
    # ... and with 4 back, they do.
    net.heal()
    net.isolate(3)
    net.tick([1, 2, 4], n=2)
    assert net.cores[1].log.committed >= index


def test_one_change_at_a_time_and_only_valid_ones() -> None:
    net = committed_cluster()
    net.add_node(4)
    net.isolate(2)
    net.isolate(3)
    net.cores[1].propose_conf_change(ConfChange(ADD, 4, "h:4"))
    with pytest.raises(ConfChangeRefused, match="not committed yet"):
        net.cores[1].propose_conf_change(ConfChange(PROMOTE, 4))
    net.heal()
    net.tick(n=2)
    with pytest.raises(ConfChangeError, match="already a learner"):
        net.cores[1].propose_conf_change(ConfChange(ADD, 4, "h:9"))
    with pytest.raises(ConfChangeError, match="not a member"):
        net.cores[1].propose_conf_change(ConfChange(REMOVE, 7))
    with pytest.raises(ConfChangeError, match="already a voter"):
        net.cores[1].propose_conf_change(ConfChange(PROMOTE, 2))
    net.cores[1].propose_conf_change(ConfChange(PROMOTE, 4))  # now it may


def test_a_new_leader_changes_nothing_before_committing_its_own_entry() -> None:
    net = committed_cluster()
    net.isolate(1)
    net.cores[2].campaign()
    # Let 2 win, but hold back the acks of its no-op entry.
    net.drop = lambda m: m.type is MessageType.APPEND_RESPONSE and m.dst == 2
    net.stabilize()
    assert net.cores[2].role is Role.LEADER
    with pytest.raises(ConfChangeRefused, match="entry of its own term"):
        net.cores[2].propose_conf_change(ConfChange(REMOVE, 1))
    net.drop = None
    net.tick([2, 3], n=2)
    net.cores[2].propose_conf_change(ConfChange(REMOVE, 1))


def test_a_removed_follower_is_forgotten_and_quorum_shrinks() -> None:
    net = committed_cluster()
    change(net, 1, REMOVE, 3)
    assert net.cores[1].membership.voters == {1, 2}
    assert 3 not in net.cores[1].progress
    # Voters {1, 2}: both are needed now.
    net.isolate(2)
    index = net.cores[1].propose(b"needs 2")
    net.tick([1], n=3)
    assert net.cores[1].log.committed < index
    # The removed node never campaigns once it knows.
    net.heal()
    net.isolate(1)
    net.tick([3], n=100)
    assert net.cores[3].role is Role.FOLLOWER


def test_a_removed_leader_steps_down_and_hands_over() -> None:
    net = committed_cluster()
    term = net.cores[1].term
    timeout_now: list[int] = []
    net.drop = lambda m: bool(m.type is MessageType.TIMEOUT_NOW and timeout_now.append(m.dst))
    net.cores[1].propose_conf_change(ConfChange(REMOVE, 1))
    net.stabilize()
    net.drop = None
    assert net.cores[1].role is Role.FOLLOWER
    assert len(timeout_now) == 1  # it told the most up-to-date voter to campaign
    net.cores[timeout_now[0]].campaign()
    net.stabilize()
    leader = net.leader()
    assert leader is not None and leader.id in {2, 3} and leader.term > term
    assert leader.membership.voters == {2, 3}
    net.tick(n=100)
    assert net.cores[1].role is Role.FOLLOWER  # never campaigns again


def test_a_truncated_configuration_entry_is_rolled_back() -> None:
    net = committed_cluster()
    net.add_node(4)
    net.isolate(1)
    net.cores[1].propose_conf_change(ConfChange(ADD, 4, "h:4"))
    net.flush()
    assert net.cores[1].membership.learners == {4}  # in force at once, uncommitted
    net.cores[2].campaign()
    net.stabilize()
    net.propose(2, b"new leader's")
    net.heal()
    net.tick(n=3)
    core1 = net.cores[1]
    assert core1.role is Role.FOLLOWER
    assert core1.membership == Membership.of({1, 2, 3})
    assert all(e.type is not EntryType.CONF_CHANGE for e in core1.log.all_entries())


def test_memberships_survive_restart_and_travel_in_snapshots() -> None:
    net = committed_cluster()
    net.add_node(4)
    change(net, 1, ADD, 4)
    for i in (1, 2, 3):
        net.restart(i)
        assert net.cores[i].membership.learners == {4}
    net.elect(1)
    # A fifth member joins after compaction: the snapshot tells it all.
    net.propose(1, b"x")
    index = net.applied_index[1]
    st = net.storages[1]
    st.create_snapshot(index, encode_state(net.applied[1]), net.cores[1].membership_at(index))
    st.compact(index)
    net.add_node(5)
    change(net, 1, ADD, 5)
    net.tick(n=5)
    assert net.storages[5].snapshot().meta.membership.learners == {4}
    assert net.cores[5].membership.learners == {4, 5}
    assert net.applied[5] == net.applied[1]
    net.restart(5)
    assert net.cores[5].membership.learners == {4, 5}


def test_membership_at_an_index() -> None:
    net = committed_cluster()
    net.add_node(4)
    added = change(net, 1, ADD, 4)
    promoted = change(net, 1, PROMOTE, 4)
    core = net.cores[1]
    assert core.membership_at(added - 1) == Membership.of({1, 2, 3})
    assert core.membership_at(added).learners == {4}
    assert core.membership_at(promoted).voters == {1, 2, 3, 4}


def test_an_emptied_learner_is_caught_up_again_not_crashed() -> None:
    """A learner whose data was wiped hears the old commit index in
    heartbeats: it answers with what it holds, and the leader starts over."""
    net = committed_cluster()
    net.add_node(4)
    change(net, 1, ADD, 4)
    for k in range(5):
        net.propose(1, b"%d" % k)
    assert net.cores[1].progress[4].match == net.cores[1].log.last_index()
    net.add_node(4)  # emptied: a new storage, a new core knowing nothing
    net.tick(n=3)
    assert net.applied[4] == net.applied[1]
    pr = net.cores[1].progress[4]
    assert pr.match == net.cores[1].log.last_index() and pr.state is ProgressState.REPLICATE


# --------------------------------------------------------------------------
# Ongaro's 2015 single-server-change bug, with the no-op rule switched off
# --------------------------------------------------------------------------


def campaign(net: Network, i: int, tries: int) -> None:
    for _ in range(tries):
        net.cores[i].campaign()
        net.stabilize()
        if net.cores[i].role is Role.LEADER:
            return


class NoOwnTermRuleCore(RaftCore):
    """Proposes membership changes without first committing an entry of its
    own term: the rule Ongaro added in 2015 (raft-dev, "bug in single-server
    membership changes") switched off."""

    def _may_change_membership(self) -> bool:
        return True


def start_2015_schedule(core: type[RaftCore]) -> Network:
    """Voters {1,2,3,4}, learner 5, cores of class ``core``. Leader 1
    promotes 5, and only 5 gets that entry; then 2 wins the next term with
    3 and 4, its appends to 4 held back (4 keeps no entry of 2's term)."""
    net = Network([1, 2, 3, 4], check_quorum=False)
    for i in net.ids:
        net.cores[i].__class__ = core
    net.elect(1)
    net.add_node(5).__class__ = core
    change(net, 1, ADD, 5)
    for i in (2, 3, 4):
        net.cut(1, i)
    net.cores[1].propose_conf_change(ConfChange(PROMOTE, 5))
    net.stabilize()  # only 5 has it
    net.heal()
    net.isolate(1)
    net.isolate(5)
    net.cores[2].campaign()
    net.drop = lambda m: m.type is MessageType.APPEND and m.dst == 4
    net.stabilize()
    assert net.cores[2].role is Role.LEADER
    return net


def test_the_2015_bug_without_the_own_term_rule_loses_a_committed_entry() -> None:
    """Voters {1,2,3,4}, learner 5. Leader 1 (term t) promotes 5; only 5
    gets that entry. 2 wins term t+1 with 3 and 4 and at once removes 1;
    only 3 gets that, and 2 and 3 are a majority of {2,3,4}: committed.
    Then 1 campaigns with 4 and 5, which never saw a term-(t+1) entry: a
    majority of its {1,...,5}. Two leaders commit different entries at one
    index; the simulator's checker says so."""
    checker = Checker()
    net = start_2015_schedule(NoOwnTermRuleCore)
    net.cut(2, 4)
    removal = net.cores[2].propose_conf_change(ConfChange(REMOVE, 1))  # the rule would refuse
    net.stabilize()
    core2 = net.cores[2]
    assert core2.log.committed >= removal  # {2, 3}: a majority of {2, 3, 4}
    checker.on_leader_commit(2, core2.term, core2.log.committed, core2.log.term)
    net.heal()
    net.isolate(2)
    net.isolate(3)
    net.restart(1)  # 1 (still leading term t, alone) restarts and campaigns
    net.cores[1].__class__ = NoOwnTermRuleCore
    campaign(net, 1, tries=2)  # 4 voted in t+1 already: 1 wins t+2
    assert net.cores[1].role is Role.LEADER  # with 4 and 5: a majority of {1, ..., 5}
    net.propose(1, b"1's term")
    core1 = net.cores[1]
    assert core1.log.committed >= removal
    with pytest.raises(SafetyViolation, match="state-machine-safety"):
        checker.on_leader_commit(1, core1.term, core1.log.committed, core1.log.term)


def test_the_own_term_rule_prevents_the_2015_schedule() -> None:
    net = start_2015_schedule(RaftCore)
    with pytest.raises(ConfChangeRefused):
        net.cores[2].propose_conf_change(ConfChange(REMOVE, 1))
    # To change anything 2 must first commit its no-op on three of
    # {1,2,3,4}; then 4 holds a term-(t+1) entry and never votes for 1.
    net.drop = None
    net.cut(2, 1)
    net.tick([2, 3, 4], n=2)
    removal = net.cores[2].propose_conf_change(ConfChange(REMOVE, 1))
    net.stabilize()
    assert net.cores[2].log.committed >= removal
    decided = net.cores[2].log.entries(removal, None)[0]
    net.heal()
    net.isolate(2)
    net.isolate(3)
    net.restart(1)
    campaign(net, 1, tries=2)
    assert net.cores[1].role is not Role.LEADER
    net.heal()
    net.tick(n=30)
    for i in (2, 3, 4):
        assert net.cores[i].log.entries(removal, None)[0] == decided


def test_a_leader_whose_own_removal_did_not_commit_can_still_finish_it() -> None:
    """Voters {1, 2}: leader 1 appends its removal, loses office before it
    commits. 2 (under {1, 2}) needs 1's vote and is refused (1's log is
    longer); 1 may campaign under {2}, is elected by 2, commits the removal
    and hands over. Found by the simulator (membership profile, seed 121)."""
    net = Network([1, 2], check_quorum=False)
    net.elect(1)
    net.isolate(1)
    net.cores[1].propose_conf_change(ConfChange(REMOVE, 1))
    net.flush()
    net.restart(1)  # out of office, the removal still only in its log
    assert net.cores[1].membership.voters == {2}
    net.heal()
    net.cores[2].campaign()
    net.stabilize()
    assert net.cores[2].role is not Role.LEADER  # 1 refuses: its log is longer
    net.tick(n=60)
    leader = net.leader()
    assert leader is not None and leader.id == 2
    assert leader.membership.voters == {2} and leader.log.committed >= leader.membership_index
    assert net.cores[1].role is Role.FOLLOWER


def test_a_learner_still_answers_vote_requests() -> None:
    """Its promotion may be committed before it has the entry: the voters
    that know may need its vote (dissertation 4.2.1)."""
    net = committed_cluster()
    net.add_node(4)
    change(net, 1, ADD, 4)
    net.cut(1, 3)
    net.cut(1, 4)
    net.cores[1].propose_conf_change(ConfChange(PROMOTE, 4))
    net.stabilize()  # only 2 has the promotion: voters {1,2,3,4} there
    assert net.cores[2].membership.voters == {1, 2, 3, 4}
    assert net.cores[4].membership.learners == {4}
    net.isolate(1)
    votes: list[tuple[int, bool]] = []
    net.drop = lambda m: bool(
        m.type is MessageType.VOTE_RESPONSE and m.src == 4 and votes.append((m.dst, m.reject))
    )
    net.cores[2].campaign()
    net.stabilize()
    assert votes == [(2, False)]  # the learner voted, and for 2


def test_a_removed_server_that_never_learned_cannot_disrupt() -> None:
    """Removed while cut off, it never gets the entry; when it comes back
    and times out, its pre-votes are refused (the others hear from their
    leader, dissertation 4.2.3; its log is behind) and the leader keeps its
    term."""
    net = Network([1, 2, 3])  # with check-quorum: the leader lease
    net.elect(1)
    net.isolate(3)
    change(net, 1, REMOVE, 3)
    assert net.cores[1].membership.voters == {1, 2}
    term = net.cores[1].term
    net.tick([3], n=50)  # it keeps campaigning (pre-votes) alone
    net.heal()
    net.tick(n=50)
    assert net.cores[1].role is Role.LEADER and net.cores[1].term == term
    assert net.cores[2].term == term
