"""A data dir's identity: which cluster and which node it belongs to.

The ``IDENTITY`` file in the data dir holds the cluster ID (hex), the node
ID, this node's address and the bootstrap membership (empty for a node that
joined). It is written atomically and durably before the Raft storage
exists, and read at every start, so that a node refuses (one line, exit 2)
a data dir of another node, a config of another cluster, and a bootstrap
config whose members disagree with the membership the data dir holds
(ARCHITECTURE.md, "Membership and identity").

The cluster ID of a bootstrapped cluster is derived from its bootstrap
members' IDs (the first 16 hex digits of the SHA-256 of the canonical
encoding of the membership without addresses), so every bootstrap node
agrees on it without talking: etcd derives its cluster ID from the member
IDs the same way. Addresses are left out because nodes behind NAT or
proxies each hold their own view of their peers' addresses (README,
"Several machines, one config"); the config checks compare the addresses
against the bootstrap membership IDENTITY keeps instead, so a config of
another cluster with the same IDs is still refused. A joiner takes the
cluster ID from the members it contacts.

The rules that decide what an empty data dir may do (``decide_bootstrap``,
``decide_join``) are pure functions of the members' ``Membership`` replies;
``kvserver.discovery`` asks the members.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from kvserver import kv_pb2
from kvserver.config import ClusterConfig
from raft.fileio import TMP_SUFFIX, OsFileSystem, write_atomic
from raft.membership import Membership

__all__ = [
    "IDENTITY_FILE",
    "Identity",
    "IdentityError",
    "check_config",
    "cluster_id_of",
    "config_membership",
    "decide_bootstrap",
    "decide_join",
    "has_data",
    "read_identity",
    "write_identity",
]

IDENTITY_FILE = "IDENTITY"
_VERSION = 1


class IdentityError(Exception):
    """This node must not start with this data dir and config; the message
    (one line) says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class Identity:
    cluster_id: str
    node_id: int
    #: "host:port" this node serves on.
    address: str
    #: The bootstrap membership (``NodeConfig.membership``); empty for a
    #: node that joined (the leader sends it the log or a snapshot).
    bootstrap: Membership

    @property
    def joined(self) -> bool:
        return self.bootstrap.empty

    def encode(self) -> bytes:
        doc = {"version": _VERSION, "cluster_id": self.cluster_id, "node_id": self.node_id,
               "address": self.address, "bootstrap": self.bootstrap.encode().decode()}
        return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Identity:
        """Raises ``ValueError``."""
        try:
            doc = json.loads(data)
            if doc["version"] != _VERSION:
                raise ValueError(f"version {doc['version']}, this build reads {_VERSION}")
            return cls(str(doc["cluster_id"]), int(doc["node_id"]), str(doc["address"]),
                       Membership.decode(doc["bootstrap"].encode()))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"missing or bad field {e}") from None


def cluster_id_of(bootstrap: Membership) -> str:
    """The cluster ID of a cluster bootstrapped with ``bootstrap`` (its
    voters and learners; addresses differ between nodes' views)."""
    ids_only = Membership.of(bootstrap.voters, bootstrap.learners)
    return hashlib.sha256(ids_only.encode()).hexdigest()[:16]


def config_membership(config: ClusterConfig) -> Membership:
    """The config file as a bootstrap membership: every node a voter."""
    return Membership.of([n.id for n in config.nodes],
                         addresses={n.id: str(n) for n in config.nodes})


def has_data(data_dir: str) -> bool:
    """Whether ``data_dir`` holds anything but an identity (Raft or store
    files: the node has run with it)."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise IdentityError(f"data dir {data_dir} is not a directory") from None
    return any(n not in (IDENTITY_FILE, IDENTITY_FILE + TMP_SUFFIX) for n in names)


def read_identity(data_dir: str) -> Identity | None:
    """The data dir's identity, None when it has no IDENTITY file. Raises
    ``IdentityError`` for an unreadable one."""
    path = os.path.join(data_dir, IDENTITY_FILE)
    try:
        data = OsFileSystem().read(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdentityError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return Identity.decode(data)
    except ValueError as e:
        raise IdentityError(f"{path}: not an identity file ({e})") from None


def write_identity(data_dir: str, identity: Identity) -> None:
    """Create the data dir if needed and write IDENTITY durably. Raises
    ``OSError``."""
    fs = OsFileSystem()
    fs.makedirs(data_dir)
    write_atomic(fs, os.path.join(data_dir, IDENTITY_FILE), identity.encode())


def _members_text(membership: Membership) -> str:
    return ", ".join(f"{n}={a}" for n, a in membership.addresses) or "none"


def check_config(identity: Identity, node_id: int, config: ClusterConfig,
                 held: Membership, data_dir: str) -> None:
    """Refuse (``IdentityError``) a data dir of another node, or a config
    that is neither this cluster's bootstrap list nor the membership the
    data dir holds (``held``: the latest in its log or snapshot). Roles are
    not compared with the held membership (a config file cannot say
    learner): ids and addresses are.
    A node that joined was given a list of members to contact, not its
    cluster's bootstrap list: any config sharing a member (id and address)
    with the held membership is accepted for it."""
    if identity.node_id != node_id:
        raise IdentityError(
            f"data dir {data_dir} belongs to node {identity.node_id} of cluster "
            f"{identity.cluster_id}, not to node {node_id}")
    listed = config_membership(config)
    if listed == identity.bootstrap:
        return
    if listed.address_map() == held.address_map():
        return
    if identity.joined and (held.empty or set(listed.addresses) & set(held.addresses)):
        return
    raise IdentityError(
        f"{config.path} lists members {_members_text(listed)}, but data dir {data_dir} "
        f"(cluster {identity.cluster_id}) holds members {_members_text(held)}: "
        f"use this cluster's own config file")


def _refuse_wiped(node_id: int, cluster_id: str, config_path: str) -> IdentityError:
    return IdentityError(
        f"node {node_id}'s data dir is empty, but node {node_id} is already a member of "
        f"cluster {cluster_id} and has held data: its log and vote are lost. Replace it: "
        f"callerMain -f {config_path} member remove {node_id}; "
        f"callerMain -f {config_path} member add NEW_ID HOST:PORT; "
        f"kvserver --id NEW_ID --addr HOST:PORT --join -f {config_path}")


def _member(reply: kv_pb2.MembershipReply, node_id: int) -> kv_pb2.Member | None:
    return next((m for m in reply.members if m.id == node_id), None)


def _standing(node_id: int, config_path: str, replies: Sequence[kv_pb2.MembershipReply]
              ) -> tuple[kv_pb2.MembershipReply, kv_pb2.Member | None] | None:
    """What a running cluster says of ``node_id``: the reply of its most
    advanced member that answered and ``node_id``'s entry there; None when
    no member of a running cluster answered. Raises the wiped-member
    refusal when any of them has seen ``node_id``."""
    running = sorted((r for r in replies if r.err == kv_pb2.OK and not r.bootstrapping),
                     key=lambda r: -r.commit_index)
    for reply in running:
        member = _member(reply, node_id)
        if member is not None and member.seen:
            raise _refuse_wiped(node_id, reply.cluster_id, config_path)
    return (running[0], _member(running[0], node_id)) if running else None


def decide_bootstrap(node_id: int, config: ClusterConfig,
                     replies: Sequence[kv_pb2.MembershipReply]) -> Identity | None:
    """What an empty data dir started without ``--join`` may do, from the
    ``Membership`` replies of the other members in the config: an
    ``Identity`` to bootstrap with, None to wait for an answer (no other
    member answered yet), or ``IdentityError``. A node alone in its config
    bootstraps at once.

    Any member of a running cluster that lists this id as seen means this
    data dir was wiped: refused, with the commands that replace it (Raft
    dissertation 3.8: a server that forgot its vote or log must not come
    back as itself). A running cluster that does not list this id, or lists
    it as a learner, or is another cluster than the config's, needs
    ``--join``. Listed unseen as a voter of this config's cluster (it never
    started; its peers went ahead without it), or peers that wait as well:
    it bootstraps."""
    bootstrap = config_membership(config)
    cluster_id = cluster_id_of(bootstrap)
    identity = Identity(cluster_id, node_id, str(config.node(node_id)), bootstrap)
    others = [n for n in config.nodes if n.id != node_id]
    if not others:
        return identity
    standing = _standing(node_id, config.path, replies)
    if standing is not None:
        best, member = standing
        if member is None:
            raise IdentityError(
                f"node {node_id} is not a member of cluster {best.cluster_id} (members: "
                f"{_members_known(best)}): it was removed, or never added; to join it: "
                f"callerMain -f {config.path} member add NEW_ID HOST:PORT; "
                f"kvserver --id NEW_ID --addr HOST:PORT --join -f {config.path}")
        if best.cluster_id != cluster_id or member.role != kv_pb2.VOTER:
            raise IdentityError(
                f"node {node_id} was added to the running cluster {best.cluster_id} and "
                f"has never started: start it with kvserver --id {node_id} --addr "
                f"{member.address} --join -f {config.path}")
        return identity
    if any(r.err == kv_pb2.OK and r.bootstrapping for r in replies):
        return identity
    return None


def _members_known(reply: kv_pb2.MembershipReply) -> str:
    return ", ".join(f"{m.id}={m.address}" for m in reply.members) or "none"


def decide_join(node_id: int, address: str, config_path: str,
                replies: Sequence[kv_pb2.MembershipReply]) -> Identity | None:
    """What ``kvserver --join`` with an empty data dir may do: an
    ``Identity`` (the cluster's ID, an empty bootstrap membership), None to
    wait (no member of a running cluster answered yet), or
    ``IdentityError``. Allowed only for a member added first (as a learner,
    ``member add``) at this address and never seen since: its log and vote
    are empty because it never had any."""
    standing = _standing(node_id, config_path, replies)
    if standing is None:
        return None
    best, member = standing
    if member is None:
        raise IdentityError(
            f"node {node_id} is not a member of cluster {best.cluster_id} (members: "
            f"{_members_known(best)}); first run: callerMain -f {config_path} "
            f"member add {node_id} {address}")
    if member.role != kv_pb2.LEARNER:
        raise IdentityError(
            f"node {node_id} is a voter of cluster {best.cluster_id}: only a new learner "
            f"joins; add a new one: callerMain -f {config_path} member add NEW_ID HOST:PORT")
    if member.address != address:
        raise IdentityError(
            f"node {node_id} was added to cluster {best.cluster_id} at {member.address}, "
            f"not {address}: start it with --addr {member.address}")
    return Identity(best.cluster_id, node_id, address, Membership())
