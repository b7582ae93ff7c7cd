"""The Kubernetes executor: the Job it builds, and how it drives one to its end.

The manifests are checked against the Kubernetes JSON schemas (the ``kubernetes-validate``
package ships them, so this works offline), in strict mode: an unknown or misspelt field fails.

No Kubernetes cluster can run on this machine, so the executor talks to a fake API server
(tests/trainer/executors/fake_kube_api.py): a real HTTP server on 127.0.0.1 that speaks the
real REST paths and JSON of the Job, Pod and pod-log endpoints, with a scripted Job lifecycle.
The executor uses the real ``kubernetes`` client pointed at it, so the client's requests and
deserialisation are exercised as in a cluster; what a real cluster adds (scheduling, the kubelet,
the garbage collector's timing) is what the fake scripts.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import kubernetes
import kubernetes_validate
import pytest

from services.trainer.executors.base import StageJob
from services.trainer.executors.kubernetes import (
    KubernetesExecutor,
    KubernetesExecutorSettings,
    build_job,
    job_manifest,
    job_name,
)
from tests.trainer.executors.fake_kube_api import FakeKubeApi, JobScript

# The newest schemas kubernetes-validate ships (1.37 when written), the client's release too.
KUBERNETES_VERSION = kubernetes_validate.latest_version()
NAMESPACE = "flywheel-test"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SPOT_TOLERATION = {
    "key": "cloud.example.com/spot",
    "operator": "Equal",
    "value": "true",
    "effect": "NoExecute",
    "tolerationSeconds": 300,
}


def stage_job(run_id: str = "run_20250101120000_abcd1234", stage: str = "ppo") -> StageJob:
    return StageJob(
        run_id=run_id,
        stage=stage,
        command=["python", "-m", "services.trainer.stages", stage, "--run", run_id],
        work_dir=Path(f"/data/runs/{run_id}/{stage}"),
        env={"FLYWHEEL_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"},
        time_limit_s=3600.5,
    )


def settings(**overrides) -> KubernetesExecutorSettings:
    values = dict(namespace=NAMESPACE, poll_s=0.01, stop_grace_s=5.0)
    values.update(overrides)
    return KubernetesExecutorSettings(**values)


def container_of(manifest: dict) -> dict:
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture
def fake_api():
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def executor(fake_api: FakeKubeApi) -> KubernetesExecutor:
    return KubernetesExecutor(settings(), fake_api.batch_api(), fake_api.core_api())


def never() -> bool:
    return False


# --- the manifest ----------------------------------------------------------------------------


def test_manifest_with_gpu_node_selector_tolerations_and_secret_is_a_valid_job():
    config = settings(
        gpu_count=2,
        node_selector={"cloud.example.com/gpu": "h100"},
        tolerations=[GPU_TOLERATION, SPOT_TOLERATION],
        env_from_secret="flywheel-trainer-env",
        service_account="flywheel-trainer",
        image_pull_secrets=["registry-credentials"],
    )
    manifest = job_manifest(stage_job(), config)

    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)

    pod = manifest["spec"]["template"]["spec"]
    container = container_of(manifest)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "16Gi"}
    assert pod["nodeSelector"] == {"cloud.example.com/gpu": "h100"}
    assert pod["tolerations"] == [GPU_TOLERATION, SPOT_TOLERATION]
    assert pod["serviceAccountName"] == "flywheel-trainer"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert container["envFrom"] == [{"secretRef": {"name": "flywheel-trainer-env"}}]
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container["env"]


def test_manifest_without_gpu_is_a_valid_job_with_no_gpu_limit():
    manifest = job_manifest(stage_job(), settings(gpu_count=0))

    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)

    limits = container_of(manifest)["resources"]["limits"]
    assert limits == {"memory": "32Gi"}
    pod = manifest["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "imagePullSecrets" not in pod
    assert "envFrom" not in container_of(manifest)


def test_manifest_runs_the_command_once_on_the_model_store():
    job = stage_job()
    manifest = job_manifest(job, settings(model_store_claim="models-pvc", stop_grace_s=45))
    spec = manifest["spec"]
    pod = spec["template"]["spec"]
    container = container_of(manifest)

    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"]["namespace"] == NAMESPACE
    # Kubernetes never retries: the trainer does, from the checkpoint.
    assert spec["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 3601  # the stage's time limit, rounded up
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert container["command"] == job.command
    assert container["image"] == "flywheel:latest"
    assert pod["volumes"] == [
        {"name": "model-store", "persistentVolumeClaim": {"claimName": "models-pvc"}}
    ]
    assert container["volumeMounts"] == [{"name": "model-store", "mountPath": "/data"}]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The stage's time to save a checkpoint between SIGTERM and SIGKILL.
    assert pod["terminationGracePeriodSeconds"] == 45
    labels = manifest["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "flywheel",
        "app.kubernetes.io/component": "trainer-stage",
        "flywheel.dev/run-id": job.run_id,
        "flywheel.dev/stage": "ppo",
    }
    assert spec["template"]["metadata"]["labels"] == labels


def test_job_name_is_a_short_dns_label_even_for_a_long_run_id():
    long_run_id = "Run_2025-01-01T12:00:00Z/" + "x" * 80
    name = job_name("reward_model", long_run_id)
    other = job_name("reward_model", long_run_id + "y")

    assert len(name) <= 63 and DNS_LABEL.match(name)
    assert name.startswith("flywheel-reward-model-run-2025-01-01t12-00-00z-")
    assert name == job_name("reward_model", long_run_id)  # a restarted worker finds it again
    assert other != name  # cut names keep a hash of the whole
    assert job_name("ppo", "run_20250101120000_abcd1234") == (
        "flywheel-ppo-run-20250101120000-abcd1234"
    )

    manifest = job_manifest(stage_job(run_id=long_run_id, stage="reward_model"), settings())
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert manifest["metadata"]["name"] == name
    # The label value is cleaned; the annotation keeps the exact run id.
    assert len(manifest["metadata"]["labels"]["flywheel.dev/run-id"]) <= 63
    assert manifest["metadata"]["annotations"]["flywheel.dev/run-id"] == long_run_id


def test_settings_read_json_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_TRAINER_K8S_GPU_COUNT", "0")
    monkeypatch.setenv("FLYWHEEL_TRAINER_K8S_NODE_SELECTOR", '{"pool": "gpu"}')
    monkeypatch.setenv("FLYWHEEL_TRAINER_K8S_TOLERATIONS", '[{"operator": "Exists"}]')
    monkeypatch.setenv("FLYWHEEL_TRAINER_K8S_IMAGE_PULL_SECRETS", '["registry-credentials"]')
    loaded = KubernetesExecutorSettings()
    assert loaded.image_pull_secrets == ["registry-credentials"]
    assert loaded.gpu_count == 0
    assert loaded.node_selector == {"pool": "gpu"}
    assert loaded.tolerations == [{"operator": "Exists"}]

    monkeypatch.setenv("FLYWHEEL_TRAINER_K8S_TOLERATIONS", '[{"key": "a", "efect": "NoSchedule"}]')
    with pytest.raises(ValueError, match="not a Kubernetes toleration"):
        KubernetesExecutorSettings()


def test_build_job_does_not_touch_a_cluster():
    # Built and serialised with no configuration loaded and no API server anywhere.
    job = build_job(stage_job(), settings())
    assert job.metadata.name == "flywheel-ppo-run-20250101120000-abcd1234"
    assert job.spec.backoff_limit == 0


# --- running ---------------------------------------------------------------------------------


def test_completed_job_reports_exit_0_and_the_pod_log(fake_api, executor):
    job = stage_job()
    name = job_name(job.stage, job.run_id)
    fake_api.scripts[name] = JobScript.succeeds(after_reads=3, log_lines=["step 1", "saved"])

    result = executor.run(job, never)

    assert result.exit_code == 0 and result.succeeded and not result.stopped
    assert result.log_tail == "step 1\nsaved"
    [create] = fake_api.requests_matching("POST", f"/namespaces/{NAMESPACE}/jobs$")
    assert create.body["metadata"]["name"] == name
    assert create.body["spec"]["backoffLimit"] == 0
    [pods] = fake_api.requests_matching("GET", f"/namespaces/{NAMESPACE}/pods$")
    assert pods.query["labelSelector"] == f"job-name={name}"
    [log] = fake_api.requests_matching("GET", "/log$")
    assert log.query == {"container": "stage", "tailLines": "50"}


def test_log_tail_keeps_the_last_lines_as_printed(fake_api):
    lines = [f"line {i}" for i in range(10)] + ['{"event": "saved", "step": 10}']
    fake_api.default_script = JobScript.succeeds(log_lines=lines)
    executor = KubernetesExecutor(
        settings(log_tail_lines=3), fake_api.batch_api(), fake_api.core_api()
    )

    result = executor.run(stage_job(), never)

    # A JSON log line comes back as text, not parsed.
    assert result.log_tail == 'line 8\nline 9\n{"event": "saved", "step": 10}'


def test_failed_job_reports_the_container_exit_code_and_log(fake_api, executor):
    fake_api.default_script = JobScript.fails(
        exit_code=3, log_lines=["step 1", "ValueError: no comparisons"]
    )

    result = executor.run(stage_job(), never)

    assert result.exit_code == 3 and not result.succeeded and not result.stopped
    log_lines = result.log_tail.splitlines()
    assert log_lines[:2] == ["step 1", "ValueError: no comparisons"]
    assert "failed: BackoffLimitExceeded" in log_lines[2]


def test_deadline_exceeded_without_a_pod_reports_exit_1_and_the_reason(fake_api, executor):
    fake_api.default_script = JobScript.deadline_exceeded()

    result = executor.run(stage_job(), never)

    assert result.exit_code == 1 and not result.stopped and result.timed_out
    assert "the Job has no pod" in result.log_tail
    assert "DeadlineExceeded: Job was active longer than specified deadline" in result.log_tail
    assert fake_api.requests_matching("GET", "/log$") == []


def test_log_read_failure_keeps_the_exit_code(fake_api, executor):
    fake_api.default_script = JobScript.fails(exit_code=137, log_status=500)

    result = executor.run(stage_job(), never)

    assert result.exit_code == 137
    assert "reading pod" in result.log_tail and "HTTP 500" in result.log_tail


def test_api_server_unavailable_for_a_while_does_not_lose_the_stage(fake_api, executor):
    fake_api.default_script = JobScript.fails(exit_code=4, after_reads=2)
    fake_api.unavailable_job_reads = 3

    result = executor.run(stage_job(), never)

    assert result.exit_code == 4
    assert len(fake_api.requests_matching("GET", "/jobs/[^/]+/status$")) == 5


def test_should_stop_deletes_the_job_in_the_foreground(fake_api):
    fake_api.default_script = JobScript.runs_until_deleted(reads_until_gone=3)
    executor = KubernetesExecutor(
        settings(stop_grace_s=12.5), fake_api.batch_api(), fake_api.core_api()
    )
    job = stage_job()
    name = job_name(job.stage, job.run_id)
    stop = threading.Event()
    # Turn true once the stage has been seen running a few times.
    threading.Timer(0.1, stop.set).start()

    started = time.monotonic()
    result = executor.run(job, stop.is_set)

    assert result.stopped and result.exit_code == -15 and not result.succeeded
    assert time.monotonic() - started < 5
    [delete] = fake_api.requests_matching("DELETE", f"/jobs/{name}$")
    assert delete.body["propagationPolicy"] == "Foreground"
    assert delete.body["gracePeriodSeconds"] == 13  # whole seconds, rounded up
    # It waited for the Job (and so its pod) to be gone before reporting the stage stopped.
    assert fake_api.job_names(NAMESPACE) == []
    assert result.log_tail.startswith("loading")  # the pod's log, read before deleting


def test_existing_running_job_is_adopted_not_duplicated(fake_api, executor):
    job = stage_job()
    manifest = job_manifest(job, executor.settings)
    # A worker restarted mid-stage: its Job has been running for a while.
    fake_api.add_existing_job(
        manifest, JobScript.succeeds(after_reads=5, log_lines=["resumed"]), reads=2
    )

    result = executor.run(job, never)

    assert result.exit_code == 0 and result.log_tail == "resumed"
    assert len(fake_api.requests_matching("POST", "/jobs$")) == 1  # answered 409
    assert fake_api.requests_matching("DELETE", "/jobs/") == []
    assert fake_api.job_names(NAMESPACE) == [manifest["metadata"]["name"]]


def test_failed_job_of_an_earlier_attempt_is_replaced(fake_api, executor):
    job = stage_job()
    manifest = job_manifest(job, executor.settings)
    name = manifest["metadata"]["name"]
    # The first attempt failed; the trainer retries the stage while that Job still exists.
    fake_api.add_existing_job(manifest, JobScript.fails(exit_code=2), reads=10)
    fake_api.scripts[name] = JobScript.succeeds(log_lines=["resumed from checkpoint"])

    result = executor.run(job, never)

    assert result.exit_code == 0 and result.log_tail == "resumed from checkpoint"
    [delete] = fake_api.requests_matching("DELETE", f"/jobs/{name}$")
    assert delete.body["propagationPolicy"] == "Foreground"
    assert len(fake_api.requests_matching("POST", "/jobs$")) == 2  # 409, then created


def test_job_of_another_run_with_the_same_name_is_not_adopted(fake_api, executor):
    job = stage_job()
    foreign = job_manifest(job, executor.settings)
    foreign["metadata"]["annotations"]["flywheel.dev/run-id"] = "someone-else"
    fake_api.add_existing_job(foreign, JobScript.runs_until_deleted())

    with pytest.raises(RuntimeError, match="not adopting"):
        executor.run(job, never)
    assert fake_api.requests_matching("DELETE", "/jobs/") == []


def test_cluster_configuration_is_loaded_on_first_run_from_the_kubeconfig(
    fake_api, tmp_path, monkeypatch
):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{fake_api.host}"}}}}]
users: [{{name: tester, user: {{token: test-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: tester, namespace: x}}}}]
current-context: fake
"""
    )
    # Not in a pod: the in-cluster loader refuses, the kubeconfig is used.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "missing"
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(missing))

    # Nothing is loaded at construction: this would fail (no kubeconfig there yet).
    executor = KubernetesExecutor(settings())
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)
    )

    result = executor.run(stage_job(), never)

    assert result.exit_code == 0
    assert len(fake_api.requests_matching("POST", f"/namespaces/{NAMESPACE}/jobs$")) == 1
