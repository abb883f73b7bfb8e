"""The cluster config file, in the seed's format::

    node0ip=127.0.0.1
    node0port=29016
    node1ip=127.0.0.1
    node1port=29017

Node ids are 0..N-1 without gaps. Blank lines and ``#`` comments are allowed.
Every mistake is a ``ConfigError`` whose message names the file, the line and
the key, because the person reading it is fixing a text file by hand.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rpc.cli import is_host_name

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "NodeAddress",
    "format_config",
    "load_config",
    "parse_config",
]

_KEY = re.compile(r"^node(0|[1-9][0-9]*)(ip|port)$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class ConfigError(Exception):
    """A config file that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class NodeAddress:
    id: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    path: str
    nodes: tuple[NodeAddress, ...]

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, node_id: int) -> NodeAddress:
        if not 0 <= node_id < len(self.nodes):
            raise ConfigError(
                f"{self.path}: no node {node_id} (the config has ids 0..{len(self.nodes) - 1})"
            )
        return self.nodes[node_id]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]


def _check_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        # A name the resolver cannot encode (a label over 63 characters)
        # would fail in getaddrinfo with a UnicodeError, not an OSError.
        return bool(_HOSTNAME.match(value)) and is_host_name(value)


def parse_config(text: str, path: str = "<config>") -> ClusterConfig:
    """Parse config text; ``path`` is only used in error messages."""
    hosts: dict[int, tuple[str, int]] = {}
    ports: dict[int, tuple[int, int]] = {}
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if "=" not in line:
            raise ConfigError(f"{where}: expected key=value, got {line!r}")
        key, _, value = (part.strip() for part in line.partition("="))
        match = _KEY.match(key)
        if match is None:
            raise ConfigError(f"{where}: unknown key {key!r} (expected node<N>ip or node<N>port)")
        if key in seen:
            raise ConfigError(f"{where}: duplicate key {key!r} (first set on line {seen[key]})")
        seen[key] = lineno
        node_id, kind = int(match.group(1)), match.group(2)
        if kind == "ip":
            if not value or not _check_host(value):
                raise ConfigError(f"{where}: key {key!r}: bad address {value!r}")
            hosts[node_id] = (value, lineno)
        else:
            if not value.isdigit() or not 1 <= int(value) <= 65535:
                raise ConfigError(f"{where}: key {key!r}: bad port {value!r} (expected 1..65535)")
            ports[node_id] = (int(value), lineno)

    ids = sorted(set(hosts) | set(ports))
    if not ids:
        raise ConfigError(f"{path}: no nodes defined (expected node0ip=... and node0port=...)")
    for expected, node_id in enumerate(ids):
        if node_id != expected:
            # The first id present after the gap is the line at fault.
            at = (hosts.get(node_id) or ports[node_id])[1]
            raise ConfigError(
                f"{path}:{at}: key 'node{node_id}...': node ids must be 0..N-1 "
                f"without gaps, node{expected} is missing"
            )
    nodes = []
    for node_id in ids:
        if node_id not in hosts:
            at = ports[node_id][1]
            raise ConfigError(
                f"{path}:{at}: node{node_id}port is set but node{node_id}ip is missing"
            )
        if node_id not in ports:
            at = hosts[node_id][1]
            raise ConfigError(
                f"{path}:{at}: node{node_id}ip is set but node{node_id}port is missing"
            )
        nodes.append(NodeAddress(node_id, hosts[node_id][0], ports[node_id][0]))
    return ClusterConfig(path=path, nodes=tuple(nodes))


def load_config(path: str | Path) -> ClusterConfig:
    """Read and parse a config file; unreadable files are a ``ConfigError`` too."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not a text file ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read config: {exc.strerror}") from None
    return parse_config(text, name)


def format_config(addresses: Sequence[tuple[str, int]]) -> str:
    """The config text for the given node addresses, ids in order."""
    lines = []
    for node_id, (host, port) in enumerate(addresses):
        lines.append(f"node{node_id}ip={host}")
        lines.append(f"node{node_id}port={port}")
    return "\n".join(lines) + "\n"
