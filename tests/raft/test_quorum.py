from __future__ import annotations

from raft.quorum import VoteResult, committed_index, has_quorum, quorum_size, vote_result


def test_quorum_size() -> None:
    assert [quorum_size(range(n)) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_committed_index_is_majority_match() -> None:
    voters = {1, 2, 3}
    assert committed_index(voters, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index(voters, {1: 5, 2: 5, 3: 1}) == 5
    assert committed_index(voters, {1: 5}) == 0  # missing voters count as 0
    assert committed_index({1, 2, 3, 4}, {1: 9, 2: 8, 3: 7, 4: 1}) == 7  # needs 3 of 4
    assert committed_index({1}, {1: 4}) == 4
    assert committed_index(set(), {}) == 0


def test_committed_index_ignores_non_voters() -> None:
    assert committed_index({1, 2, 3}, {1: 5, 2: 1, 3: 1, 9: 5}) == 1


def test_vote_result() -> None:
    voters = {1, 2, 3, 4, 5}
    assert vote_result(voters, {1: True}) is VoteResult.PENDING
    assert vote_result(voters, {1: True, 2: True, 3: True}) is VoteResult.WON
    assert vote_result(voters, {1: True, 2: False, 3: False, 4: False}) is VoteResult.LOST
    assert vote_result(voters, {1: True, 2: False, 3: False}) is VoteResult.PENDING
    assert vote_result({1}, {1: True}) is VoteResult.WON
    assert vote_result({1, 2}, {1: True, 9: True}) is VoteResult.PENDING


def test_has_quorum() -> None:
    assert has_quorum({1, 2, 3}, [1, 2])
    assert not has_quorum({1, 2, 3}, [1, 7])
    assert has_quorum({1}, [1])
