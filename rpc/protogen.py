"""Regenerate ``*_pb2.py`` and ``*_pb2.pyi`` from ``.proto`` files.

Usage: ``python -m rpc.protogen [--root DIR] [--out DIR] [FILES...]``

With no FILES every ``.proto`` under the root (the repository, found as the
directory holding pyproject.toml) is compiled. The include path is the root,
so a file ``raft/raft.proto`` becomes ``raft/raft_pb2.py`` and a proto that
imports it is generated with ``from raft import raft_pb2``: exactly the flat
packages of this repository. Generated files are committed;
tests/test_generated_code.py checks they match what this produces.

Exit codes: 0 done, 1 protoc failed, 2 usage error (one line on stderr).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["discover_protos", "find_root", "generate", "main"]

# Directories that never hold the project's own protos.
_SKIP_DIRS = frozenset({".venv", "venv", ".git", "build", "dist", "node_modules", ".tox"})


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) with pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return here


def discover_protos(root: Path) -> list[Path]:
    """Every .proto under `root`, relative to it, sorted (skips venvs and build dirs)."""
    found: list[Path] = []
    for path in root.rglob("*.proto"):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        found.append(rel)
    return sorted(found)


def _mypy_plugin() -> str | None:
    # The plugin script is installed beside the interpreter in a venv, which is
    # not necessarily on PATH when run as `.venv/bin/python -m rpc.protogen`.
    beside = Path(sys.executable).parent / "protoc-gen-mypy"
    if beside.is_file():
        return str(beside)
    return shutil.which("protoc-gen-mypy")


def generate(files: Iterable[Path | str], *, root: Path, out: Path) -> None:
    """Compile `files` (relative to `root` or absolute inside it) into `out`.

    Raises RuntimeError with protoc's complaint when it fails.
    """
    # Imported here so `import rpc` never needs the dev-only grpc_tools.
    from importlib import resources

    from grpc_tools import protoc

    root = root.resolve()
    rel_files: list[str] = []
    for f in files:
        p = Path(f)
        p = p.resolve() if p.is_absolute() else (root / p).resolve()
        try:
            rel_files.append(p.relative_to(root).as_posix())
        except ValueError:
            raise RuntimeError(f"{f}: not inside the include root {root}") from None
        if not p.is_file():
            raise RuntimeError(f"{f}: no such file")
    if not rel_files:
        return
    plugin = _mypy_plugin()
    if plugin is None:
        raise RuntimeError("protoc-gen-mypy not found: install mypy-protobuf (the dev extra)")
    well_known = str(resources.files("grpc_tools") / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        *rel_files,
    ]
    # protoc.main reads files relative to the include path, not the cwd.
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed (exit {rc}) on {' '.join(rel_files)}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2: the project's rule for every command line.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m rpc.protogen", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help=".proto files (default: all in the repo)")
    parser.add_argument("--root", type=Path, help="include root (default: the repo root)")
    parser.add_argument("--out", type=Path, help="output root (default: the include root)")
    ns = parser.parse_args(argv)
    root = (ns.root or find_root()).resolve()
    out = (ns.out or root).resolve()
    files = [Path(f) for f in ns.files] if ns.files else discover_protos(root)
    try:
        generate(files, root=root, out=out)
    except RuntimeError as exc:
        sys.stderr.write(f"protogen: {exc}\n")
        return 1
    for f in files:
        print(f"generated {Path(f).with_suffix('')}_pb2.py(i)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
