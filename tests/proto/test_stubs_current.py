"""The committed gRPC stubs match the .proto files, and the check notices when they do not.

Everything that modifies protos or stubs works on copies under tmp_path; the
real tree is only read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import protogen

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree_copy(tmp_path) -> tuple[Path, Path]:
    """(proto root, generated dir): copies of the real ones."""
    proto = tmp_path / "proto"
    generated = tmp_path / "generated"
    shutil.copytree(protogen.PROTO_ROOT, proto)
    shutil.copytree(protogen.OUT_DIR, generated, ignore=shutil.ignore_patterns("__pycache__"))
    return proto, generated


def _add_field(proto_root: Path) -> None:
    """Change a contract the way a developer would: one new field in ChatMessage."""
    path = proto_root / "flywheel" / "v1" / "common.proto"
    text = path.read_text()
    anchor = "  string content = 2;\n"
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + "  string name = 3;\n", 1))


def _run_check(proto_root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.protogen",
            "--check",
            "--proto-root",
            proto_root,
            "--out",
            out,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_committed_stubs_are_current():
    assert protogen.check() == [], "stale stubs: run `make proto`"


def test_generation_is_deterministic_and_path_independent(tree_copy):
    proto, _ = tree_copy
    first = protogen.render(proto)
    assert first == protogen.render(proto) == protogen.render(protogen.PROTO_ROOT)
    assert list(first) == sorted(first)
    for rel, text in first.items():
        assert str(proto.parent) not in text, rel
        assert "from flywheel" not in text, f"{rel} still imports the top-level package"
    assert {"__init__.py", "flywheel/__init__.py", "flywheel/v1/__init__.py"} <= first.keys()


def test_check_fails_when_a_proto_changes_without_regenerating(tree_copy):
    proto, generated = tree_copy
    assert protogen.check(generated, proto) == []

    _add_field(proto)

    problems = protogen.check(generated, proto)
    assert "differs: flywheel/v1/common_pb2.py" in problems
    assert "differs: flywheel/v1/common_pb2.pyi" in problems
    assert all(p.startswith("differs: flywheel/v1/common_pb2") for p in problems), problems

    result = _run_check(proto, generated)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "common_pb2.py" in result.stdout
    assert "make proto" in result.stdout


def test_check_passes_after_regenerating(tree_copy):
    proto, generated = tree_copy
    _add_field(proto)

    written = protogen.generate(generated, proto)

    assert set(written) == {"flywheel/v1/common_pb2.py", "flywheel/v1/common_pb2.pyi"}
    assert protogen.check(generated, proto) == []
    result = _run_check(proto, generated)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_missing_and_extra_files(tree_copy):
    proto, generated = tree_copy
    (generated / "flywheel" / "v1" / "reward_pb2_grpc.py").unlink()
    (generated / "flywheel" / "v1" / "old_pb2.py").write_text("# left over\n")

    assert protogen.check(generated, proto) == [
        "extra: flywheel/v1/old_pb2.py",
        "missing: flywheel/v1/reward_pb2_grpc.py",
    ]


def test_generate_removes_stubs_of_deleted_protos(tree_copy):
    proto, generated = tree_copy
    (proto / "flywheel" / "v1" / "admin.proto").unlink()

    protogen.generate(generated, proto)

    assert not list(generated.rglob("admin_pb2*"))
    assert protogen.check(generated, proto) == []


def test_invalid_proto_is_an_error_not_a_diff(tree_copy):
    proto, generated = tree_copy
    bad = proto / "flywheel" / "v1" / "bad.proto"
    bad.write_text('syntax = "proto3";\npackage flywheel.v1;\nmessage X { Unknown u = 1; }\n')

    with pytest.raises(protogen.ProtocError):
        protogen.check(generated, proto)
    result = _run_check(proto, generated)
    assert result.returncode == 2
    assert "Unknown" in result.stderr
