"""Majority arithmetic over a set of voters (paper 5.2, 5.3; etcd ``quorum/``).

Pure functions, no state: the core hands in the voters and what each one
reported (match index, vote, ack) and gets the majority's answer back.
Keeping the voters a parameter, not a constant, leaves room for joint
consensus later (dissertation 4.3: a joint quorum is a majority of both).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = ["VoteResult", "committed_index", "has_quorum", "quorum_size", "vote_result"]


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voters: Collection[int]) -> int:
    """The smallest number of voters that forms a majority."""
    return len(voters) // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The largest index replicated on a majority of ``voters`` (paper 5.3:
    "a log entry is committed once ... replicated it on a majority").

    A voter missing from ``match`` counts as 0. With no voters, nothing can be
    committed by counting: returns 0.
    """
    if not voters:
        return 0
    if len(voters) == 3:
        # The common cluster size, on every acknowledgement: the median of
        # three, without building and sorting a list.
        a, b, c = (match.get(v, 0) for v in voters)
        if a < b:
            a, b = b, a
        # Now a >= b; the median is c clamped to [b, a].
        return a if c >= a else b if c <= b else c
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[quorum_size(voters) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be
    reached, PENDING otherwise. Votes from non-voters are ignored."""
    granted = rejected = 0
    for v in voters:
        answer = votes.get(v)
        if answer is True:
            granted += 1
        elif answer is False:
            rejected += 1
    q = quorum_size(voters)
    if granted >= q:
        return VoteResult.WON
    if len(voters) - rejected < q:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], members: Collection[int]) -> bool:
    """Whether ``members`` (e.g. the recently active peers) include a majority
    of ``voters``."""
    present = set(members)
    return sum(1 for v in voters if v in present) >= quorum_size(voters)
