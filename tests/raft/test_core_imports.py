"""The consensus core is pure: no I/O, clocks or global randomness."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

CORE_MODULES = [
    "raft.core",
    "raft.membership",
    "raft.log",
    "raft.progress",
    "raft.quorum",
    "raft.read_only",
    "raft.types",
    "raft.storage",
]
FORBIDDEN = {"asyncio", "socket", "time", "os", "random", "threading", "selectors", "subprocess"}
#: The only names that may come from ``random``: the type of the injected RNG.
ALLOWED_FROM_RANDOM = {"Random"}


def _tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return ast.parse(Path(spec.origin).read_text(), filename=spec.origin)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_is_pure(module: str) -> None:
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                assert top not in FORBIDDEN, f"{module} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            if top == "random":
                names = {a.name for a in node.names}
                assert names <= ALLOWED_FROM_RANDOM, f"{module} imports {names} from random"
            else:
                assert top not in FORBIDDEN, f"{module} imports from {node.module}"


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_only_core_or_stdlib(module: str) -> None:
    """The core may import itself and the standard library, nothing from rpc/."""
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith(("rpc", "kvserver", "clerk")), node.module
            if node.module.startswith("raft."):
                assert node.module in CORE_MODULES, f"{module} imports non-core {node.module}"


def test_global_random_functions_not_used() -> None:
    for module in CORE_MODULES:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert node.value.id != "random", f"{module} uses random.{node.attr}"
