"""Cluster membership: who votes, who only listens, and where they are.

A ``Membership`` is a value: the voters, the learners (etcd's name;
hashicorp/raft's "nonvoters") and each member's address. It lives in the
replicated log, one whole ``Membership`` per configuration entry
(``EntryType.CONF_CHANGE``, as hashicorp/raft stores a whole
``Configuration``), and in every snapshot's metadata, so a node's data
dir alone says who its cluster is (dissertation chapter 4; the config file
only bootstraps it).

Changes go one server at a time (dissertation 4.1): adding a learner,
promoting a learner to voter, removing a member. Any majority of the
voters before such a change overlaps any majority after it, which is what
makes one change safe without joint consensus. The rules about *when* a
change may be proposed (one uncommitted change at a time, and only once
the leader has committed an entry of its own term) are the core's, see
``RaftCore.propose_conf_change``.

Encoded as canonical JSON (sorted keys, no spaces): small, readable in a
hex dump of the WAL, and the same bytes for the same value on every node.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["ConfChange", "ConfChangeError", "ConfChangeOp", "Membership", "parse_address"]


class ConfChangeError(ValueError):
    """A configuration change that cannot apply to the membership it was
    proposed against (adding a member twice, promoting a voter, removing
    the last voter, ...). The message says which rule it broke."""


def parse_address(text: str) -> tuple[str, int]:
    """A member address "host:port" (an IPv6 host in brackets,
    "[::1]:8000") as (host, port). Raises ``ValueError`` naming what is
    wrong: no port, a port that is not 1-65535, an empty host or one with
    whitespace."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"address {text!r} is not HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"address {text!r}: port {port} is not 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {text!r}: an IPv6 host goes in brackets, [::1]:{port}")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"address {text!r}: bad host {host!r}")
    return host, port


class ConfChangeOp(enum.Enum):
    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server change. ``address`` ("host:port") is needed to add
    a learner and ignored otherwise."""

    op: ConfChangeOp
    node: int
    address: str = ""

    def __str__(self) -> str:
        if self.op is ConfChangeOp.ADD_LEARNER:
            return f"add learner {self.node} at {self.address}"
        return f"{self.op.value} {self.node}"


@dataclass(frozen=True, slots=True)
class Membership:
    """Voters and learners (disjoint sets of node ids) and the address of
    each member. ``addresses`` is a tuple of (id, "host:port") sorted by id,
    so that equal memberships compare and encode equal; an address may be
    "" where it is not known (the simulator has none)."""

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    addresses: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        both = self.voters & self.learners
        if both:
            raise ValueError(f"nodes {sorted(both)} are both voter and learner")

    @classmethod
    def of(
        cls,
        voters: Iterable[int],
        learners: Iterable[int] = (),
        addresses: Mapping[int, str] | None = None,
    ) -> Membership:
        members = set(voters) | set(learners)
        addrs = addresses or {}
        return cls(
            frozenset(voters),
            frozenset(learners),
            tuple(sorted((n, addrs[n]) for n in members if n in addrs)),
        )

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    @property
    def empty(self) -> bool:
        return not self.voters and not self.learners

    def address(self, node: int) -> str:
        """The member's "host:port", or "" if unknown."""
        for n, addr in self.addresses:
            if n == node:
                return addr
        return ""

    def address_map(self) -> dict[int, str]:
        return dict(self.addresses)

    def applied(self, change: ConfChange) -> Membership:
        """The membership after ``change``. Raises ``ConfChangeError`` when the
        change does not fit this membership."""
        node, addrs = change.node, self.address_map()
        if change.op is ConfChangeOp.ADD_LEARNER:
            if node in self.members:
                kind = "voter" if node in self.voters else "learner"
                raise ConfChangeError(f"node {node} is already a {kind}")
            if node < 0:
                raise ConfChangeError(f"node id {node} is negative")
            if not change.address:
                raise ConfChangeError(f"adding node {node} needs its address")
            taken = [n for n, a in self.addresses if a == change.address]
            if taken:
                raise ConfChangeError(f"address {change.address} is node {taken[0]}'s")
            addrs[node] = change.address
            return Membership.of(self.voters, self.learners | {node}, addrs)
        if change.op is ConfChangeOp.PROMOTE:
            if node in self.voters:
                raise ConfChangeError(f"node {node} is already a voter")
            if node not in self.learners:
                raise ConfChangeError(f"node {node} is not a learner of this cluster")
            return Membership.of(self.voters | {node}, self.learners - {node}, addrs)
        if node not in self.members:
            raise ConfChangeError(f"node {node} is not a member of this cluster")
        if self.voters == {node}:
            raise ConfChangeError(f"node {node} is the last voter; it cannot be removed")
        addrs.pop(node, None)
        return Membership.of(self.voters - {node}, self.learners - {node}, addrs)

    def encode(self) -> bytes:
        doc = {
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
            "addresses": {str(n): a for n, a in self.addresses},
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        """Inverse of ``encode``. Raises ``ValueError`` on anything else."""
        try:
            doc = json.loads(data)
            voters = [int(n) for n in doc["voters"]]
            learners = [int(n) for n in doc["learners"]]
            addrs = {int(n): str(a) for n, a in doc["addresses"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not an encoded membership: {e}") from None
        return cls.of(voters, learners, addrs)

    def describe(self) -> str:
        """"voters 0,1,2; learners 3" for logs and errors."""
        text = "voters " + (",".join(map(str, sorted(self.voters))) or "none")
        if self.learners:
            text += "; learners " + ",".join(map(str, sorted(self.learners)))
        return text
