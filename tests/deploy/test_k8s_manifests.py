"""k8s/, the plain manifests for people without Helm, and the Jobs of the trainer's Kubernetes
executor: valid against the Kubernetes schemas, and k8s/ equal to the chart's default render."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.trainer.executors.base import StageJob
from services.trainer.executors.kubernetes import KubernetesExecutorSettings, job_manifest
from tests.deploy.helm_support import (
    KUBERNETES_VERSIONS,
    REPO,
    containers,
    env_of,
    pod_spec,
    render,
    render_k8s,
    render_named,
    validate,
)

K8S = REPO / "k8s"


def k8s_objects() -> dict[str, dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return {name: yaml.safe_load((K8S / name).read_text()) for name in kustomization["resources"]}


def test_k8s_is_the_charts_default_render():
    module = render_k8s()
    stale = module.differences(module.k8s_files(render()))

    assert stale == [], "k8s/ is stale: run .venv/bin/python tools/render-k8s.py"


def test_the_drift_check_sees_a_changed_file(tmp_path):
    module = render_k8s()
    expected = module.k8s_files(render())
    module.write(expected, tmp_path)
    assert module.differences(expected, tmp_path) == []

    name = next(n for n in expected if n.startswith("deployment-"))
    (tmp_path / name).write_text(expected[name].replace("replicas: 1", "replicas: 2"))
    (tmp_path / "extra.yaml").write_text("{}\n")
    assert module.differences(expected, tmp_path) == [
        "not rendered by the chart: extra.yaml",
        f"differs: {name}",
    ]


def test_the_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert listed == present
    assert not [p for p in K8S.iterdir() if p.suffix != ".yaml"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_k8s_manifests_are_valid_kubernetes(version):
    objects = k8s_objects()
    assert len(objects) > 20  # every service, its Service, Redis, PostgreSQL, policies

    for obj in objects.values():
        validate(obj, version)


def test_k8s_references_only_secrets_it_has_or_tells_you_to_create():
    objects = k8s_objects()
    to_create = (K8S / "kustomization.yaml").read_text()
    present = {o["metadata"]["name"] for o in objects.values() if o["kind"] == "Secret"}

    referenced = set()
    for obj in objects.values():
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in containers(obj):
            for item in container.get("env", []):
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
            for source in container.get("envFrom", []):
                referenced.add((source["secretRef"]["name"], None))
        for volume in pod_spec(obj).get("volumes", []):
            if "secret" in volume:
                referenced.add((volume["secret"]["secretName"], None))
    assert referenced
    for name, key in sorted(referenced, key=str):
        if name in present:
            continue
        # Listed in the kustomization's header as "#   <name> (keys: <key>, ...)".
        line = next((x for x in to_create.splitlines() if x.startswith(f"#   {name} ")), None)
        assert line is not None, f"{name} is neither in k8s/ nor in the list to create"
        assert key is None or key in line, (name, key)
    # Generated credentials never reach the repository.
    assert not [
        o
        for o in objects.values()
        if o["kind"] == "Secret"
        and (o["metadata"].get("annotations") or {}).get("flywheel.dev/generated-credential")
        == "true"
    ]


# --- the trainer's Kubernetes executor ---------------------------------------------------------


def executor_settings_from_the_chart(release, monkeypatch) -> KubernetesExecutorSettings:
    """The executor's settings as a train worker of this release reads them: from the
    FLYWHEEL_TRAINER_K8S_* variables of the chart's trainer Secret."""
    env = release.find("Secret", "flywheel-trainer-env")["stringData"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return KubernetesExecutorSettings()


@pytest.mark.parametrize(
    "values",
    [
        "values-gpu.yaml",
        {
            "global": {"imagePullSecrets": ["registry-a"]},
            "trainer": {
                "executor": "kubernetes",
                "kubernetes": {"gpuCount": 0},
                "image": {"pullSecrets": [{"name": "registry-b"}]},
            },
        },
    ],
    ids=["gpu", "cpu-private-registry"],
)
def test_the_executors_jobs_are_valid_and_match_the_release(values, monkeypatch):
    release = render_named(values) if isinstance(values, str) else render(values)
    settings = executor_settings_from_the_chart(release, monkeypatch)
    job = StageJob(
        run_id="run_20260101120000_abcd1234",
        stage="ppo",
        # The argv the pipeline gives every heavy stage (services/trainer/pipeline.py).
        command=["python", "-m", "services.trainer.stage_main", "/data/trainer/runs/r/ppo"],
        work_dir=Path("/data/trainer/runs/r/ppo"),
    )
    manifest = job_manifest(job, settings)

    for version in KUBERNETES_VERSIONS:
        validate(manifest, version)

    # The Job runs where the worker expects: same image, the release's model store at the
    # worker's mount path, the trainer settings, and the namespace the Role is in.
    train = release.find("Deployment", "flywheel-trainer-train")
    [worker] = pod_spec(train)["containers"]
    pod = manifest["spec"]["template"]["spec"]
    [stage] = pod["containers"]
    assert stage["image"] == worker["image"]
    # ...pulled with the worker's credentials (a private registry serves both or neither).
    assert pod.get("imagePullSecrets") == pod_spec(train).get("imagePullSecrets")
    [claim] = [v for v in pod_spec(train)["volumes"] if v["name"] == "model-store"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == claim["persistentVolumeClaim"]
    assert release.find("PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "model-store")["mountPath"]
    assert stage["volumeMounts"][0]["mountPath"] == mount
    assert {"secretRef": {"name": "flywheel-trainer-env"}} in stage["envFrom"]
    assert manifest["metadata"]["namespace"] == release.of_kind("Role")[0]["metadata"]["namespace"]
    assert release.find("ServiceAccount", pod["serviceAccountName"])
    gpus = release.find("Secret", "flywheel-trainer-env")["stringData"][
        "FLYWHEEL_TRAINER_K8S_GPU_COUNT"
    ]
    if gpus == "0":
        assert "nvidia.com/gpu" not in stage["resources"]["limits"]
    else:
        assert stage["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert pod["tolerations"] and pod["nodeSelector"]


def test_the_worker_reads_the_same_settings_as_its_stage_jobs():
    release = render_named("values-gpu.yaml")
    [worker] = pod_spec(release.find("Deployment", "flywheel-trainer-train"))["containers"]

    assert {"secretRef": {"name": "flywheel-trainer-env"}} in worker["envFrom"]
    env = env_of(worker)
    # Nothing the Secret sets is overridden per container (the Job would not see it).
    settings = release.find("Secret", "flywheel-trainer-env")["stringData"]
    assert not (set(env) & set(settings)), set(env) & set(settings)
    assert settings["FLYWHEEL_TRAINER_DEVICE"] == "cuda"
