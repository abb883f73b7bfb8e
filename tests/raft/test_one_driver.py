"""One driver: ``RaftNode``, the simulator, the core test harness and the
core benchmark all turn Readys into I/O through ``ReadyProcessor`` (issue
13). A driver with its own copy of the ordering rule is a safety bug the
simulator would not see, so this fails the moment one appears: only the
processor may call a core's ``ready()`` or ``advance()`` (the core's own
unit tests, which test those calls, excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

from raft.file_storage import FileStorage
from raft.node import NodeConfig, RaftNode
from raft.ready_processor import ReadyProcessor
from tests.raft.cluster import RecordingStateMachine
from tests.raft.core_harness import Network
from tests.sim.simulator import PROFILES, Simulator

ROOT = Path(__file__).resolve().parents[2]
DRIVER_METHODS = {"ready", "advance"}


def _calls(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [(node.lineno, node.func.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in DRIVER_METHODS
            # ReadOnly.advance(context) is the read-index queue, not a core.
            and not (node.func.attr == "advance" and isinstance(node.func.value, ast.Attribute)
                     and node.func.value.attr == "_read_only")]


def test_only_the_processor_drives_a_core() -> None:
    allowed = {ROOT / "raft" / "ready_processor.py"}
    offenders = []
    for folder in ("raft", "kvserver", "clerk", "benchmarks", "tests/sim", "tests/raft",
                   "tests/kvserver", "tests/nemesis"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            # test_core_*: the core's own unit tests; test_read_only: the
            # read-index queue's advance(), not a core's.
            if (path in allowed or path.name.startswith("test_core_")
                    or path.name in ("test_read_only.py", "test_one_driver.py")
                    or path.name.endswith("_pb2.py")):
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line} .{name}()"
                          for line, name in _calls(path)]
    assert not offenders, "drives a core itself: " + ", ".join(offenders)


def test_node_simulator_and_harness_run_the_same_processor_class(tmp_path: Path) -> None:
    node = RaftNode(NodeConfig(id=0, peers=frozenset({0})), FileStorage(tmp_path),
                    RecordingStateMachine())
    try:
        assert type(node._proc) is ReadyProcessor
    finally:
        node._storage.close()
    sim = Simulator(1, PROFILES["reliable"])
    for n in sim.nodes:
        sim._start(n)
        assert type(n.proc) is ReadyProcessor
    net = Network([1, 2, 3])
    assert type(net.processor(1)) is ReadyProcessor
