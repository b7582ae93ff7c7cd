"""The architecture rules in .importlinter hold, and a forbidden import breaks `make lint`.

Runs lint-imports (what `make lint` runs) on a copy of the source tree: as it is, and with one
forbidden import added per rule.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(
        REPO / "services", root / "services", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_rule(tree):
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "rule"),
    [
        ("services/rlhf/_bad.py", "import fastapi", "The algorithms (services.rlhf)"),
        ("services/rlhf/_bad.py", "import redis", "The algorithms (services.rlhf)"),
        ("services/reward/_bad.py", "import services.feedback.core", "Services never import"),
        ("services/common/_bad.py", "import services.inference.gateway.app", "services.common"),
        ("services/cli/_bad.py", "import services.feedback.core", "The CLI reaches services"),
    ],
)
def test_a_forbidden_import_breaks_the_lint(tree, module, statement, rule):
    bad = tree / module
    bad.write_text(statement + "\n")
    try:
        result = lint(tree)
    finally:
        bad.unlink()
    assert result.returncode != 0 and "1 broken" in result.stdout, result.stdout
    report = result.stdout.split("Broken contracts", 1)[1]
    assert rule in report and module.removesuffix(".py").replace("/", ".") in report, report
