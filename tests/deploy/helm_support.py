"""Shared by the deployment tests: the chart rendered by Helm's library (tools/render-k8s.py).

Renders are cached per values (each takes about a second, mostly Helm's start-up), so the test
modules share them. The returned objects are deep copies: a test may change what it got.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "flywheel"
VALUES_FILES = {
    "default": None,
    "values-gpu.yaml": CHART / "values-gpu.yaml",
    "values-external.yaml": CHART / "values-external.yaml",
}
# The schemas every manifest is validated against (kubernetes-validate ships them; no network):
# the oldest Kubernetes the chart supports (Chart.yaml kubeVersion), the version the renders
# report, and the newest this kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")


@functools.cache
def render_k8s() -> ModuleType:
    """tools/render-k8s.py as a module (its file name is not an identifier)."""
    spec = importlib.util.spec_from_file_location("render_k8s", REPO / "tools" / "render-k8s.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_k8s"] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def values_of(name: str) -> dict[str, Any] | None:
    path = VALUES_FILES[name]
    return None if path is None else yaml.safe_load(path.read_text())


@functools.cache
def _render(values_json: str):
    return render_k8s().render(json.loads(values_json) or None)


def render(values: dict[str, Any] | None = None):
    """The release Helm renders with ``values`` over the chart's defaults (a fresh copy)."""
    return copy.deepcopy(_render(json.dumps(values or {}, sort_keys=True)))


def render_named(name: str):
    return render(values_of(name))


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload or a Pod."""
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def workloads(release) -> list[dict[str, Any]]:
    kinds = {"Deployment", "StatefulSet", "Job", "Pod"}
    return [obj for obj in release.manifests + release.hooks if obj["kind"] in kinds]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _cache_schema_files() -> None:
    # kubernetes-validate reads and parses its schema files (the definitions are megabytes) on
    # every call; the files do not change, so the tests parse each once. Validation is the same.
    read = kubernetes_validate.utils.schema_contents
    if not hasattr(read, "cache_info"):
        kubernetes_validate.utils.schema_contents = functools.cache(read)


def validate(obj: dict[str, Any], version: str) -> None:
    """kubernetes-validate, strict (an unknown or misspelt field fails); a kind without a schema
    raises SchemaNotFoundError, so it fails too."""
    _cache_schema_files()
    kubernetes_validate.validate(obj, version, strict=True)
