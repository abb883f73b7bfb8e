"""The seed-format config: accepted forms and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvserver.config import ConfigError, format_config, load_config, parse_config

GOOD = """# three nodes
node0ip=127.0.0.1
node0port=29016

node1ip=127.0.0.1
node1port=29017
node2ip=localhost
node2port=29018
"""


def test_parses_seed_format_with_comments_and_blank_lines() -> None:
    cfg = parse_config(GOOD, "t.conf")
    assert cfg.addresses == [("127.0.0.1", 29016), ("127.0.0.1", 29017), ("localhost", 29018)]
    assert cfg.node(2).port == 29018


def test_format_round_trips() -> None:
    addrs = [("127.0.0.1", 1000 + i) for i in range(5)]
    assert parse_config(format_config(addrs)).addresses == addrs


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("node0ip=127.0.0.1\nnode0port=1\nnode0port=2\n", "t.conf:3: duplicate key 'node0port'"),
        ("node0ip=127.0.0.1\n", "t.conf:1: node0ip is set but node0port is missing"),
        ("node0port=80\n", "t.conf:1: node0port is set but node0ip is missing"),
        ("node0ip=127.0.0.1\nnode0port=99999\n", "t.conf:2: key 'node0port': bad port '99999'"),
        ("node0ip=127.0.0.1\nnode0port=abc\n", "t.conf:2: key 'node0port': bad port 'abc'"),
        ("node0ip=127.0.0.1\nnode0port=1\nnode2ip=127.0.0.1\nnode2port=2\n",
         "t.conf:3: key 'node2...': node ids must be 0..N-1 without gaps, node1 is missing"),
        ("node0ip=127.0.0.1\nnode0port=1\nnodes=3\n", "t.conf:3: unknown key 'nodes'"),
        ("node0ip=127.0.0.1\nnode0port=1\ngarbage\n", "t.conf:3: expected key=value"),
        ("node0ip=not an ip\nnode0port=1\n", "t.conf:1: key 'node0ip': bad address"),
        ("# nothing\n", "t.conf: no nodes defined"),
    ],
)
def test_errors_name_file_line_and_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.conf")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.conf")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(binary)


def test_unknown_node_id_is_an_error() -> None:
    cfg = parse_config(GOOD, "t.conf")
    with pytest.raises(ConfigError, match="no node 3"):
        cfg.node(3)
