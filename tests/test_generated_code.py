"""The committed *_pb2.py / *_pb2.pyi files are exactly what protogen makes.

Every .proto in the repository is found by glob (rpc.protogen.discover_protos,
the same list `make proto` compiles), so protos added later are covered too.
Fix a failure with `make proto` and commit the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rpc.protogen import discover_protos, generate

ROOT = Path(__file__).resolve().parent.parent
PROTOS = discover_protos(ROOT)


def test_protos_are_found() -> None:
    names = {p.as_posix() for p in PROTOS}
    assert {"rpc/rpc.proto", "examples/friend.proto"} <= names


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protogen")
    generate(PROTOS, root=ROOT, out=out)
    return out


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.as_posix())
def test_generated_code_is_up_to_date(proto: Path, generated: Path) -> None:
    stem = proto.with_suffix("")
    for suffix in ("_pb2.py", "_pb2.pyi"):
        rel = Path(f"{stem}{suffix}")
        fresh = (generated / rel).read_text()
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is missing: run `make proto`"
        assert committed.read_text() == fresh, f"{rel} is stale: run `make proto`"
