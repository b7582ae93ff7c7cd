"""Run a heavy stage as a Kubernetes Job and wait for it.

In a cluster the Celery worker is a small pod without a GPU; the heavy stages (RM training,
PPO, the policy gate) run as one Kubernetes Job each, scheduled onto a GPU node. The Job's pod
uses the same image as the worker, so ``job.command`` (the argv the local executor would spawn)
means the same thing there. It mounts the same model-store PersistentVolumeClaim at the same
path as the worker does, so ``job.work_dir``, the checkpoints and the ``result.json`` the stage
writes there are visible to the worker when the Job ends: this executor only reports how the
process ended (exit code, last log lines), never the stage's result.

The Job has ``backoffLimit: 0``: Kubernetes never re-runs a failed stage by itself. The trainer
decides about retries (it counts attempts in its run record and resumes from the stage's last
checkpoint), and a second, hidden retry loop in the cluster would run stages the run record
does not know about.

A Job's name is derived from the run and the stage only, so a worker that restarted in the
middle of a stage finds its Job again (a create answered 409 Conflict) and waits for it
instead of starting a second one next to it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import kubernetes
import urllib3
from kubernetes.client import (
    ApiClient,
    ApiException,
    BatchV1Api,
    Configuration,
    CoreV1Api,
    V1Capabilities,
    V1Container,
    V1DeleteOptions,
    V1EnvFromSource,
    V1EnvVar,
    V1Job,
    V1JobCondition,
    V1JobSpec,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Pod,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecretEnvSource,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.trainer.executors.base import StageExit, StageJob

log = logging.getLogger(__name__)

# Kubernetes never retries a stage: the trainer does, resuming from the checkpoint (see the
# module docstring). Not a setting on purpose.
BACKOFF_LIMIT = 0
# The exit code a stopped stage reports, as a process killed by SIGTERM does locally.
STOPPED_EXIT_CODE = -15
STAGE_CONTAINER = "stage"
MODEL_STORE_VOLUME = "model-store"
# Job names end up as the value of the `job-name` label of the pods: a DNS-1123 label.
MAX_NAME_LENGTH = 63
NAME_HASH_LENGTH = 10
# Every API call is bounded (connect, read), so a hung API server cannot hang the worker.
REQUEST_TIMEOUT_S = (5.0, 30.0)
# After the grace period the kubelet kills the pod; this is how long we allow, on top, for
# the kubelet and the garbage collector to report the pod and then the Job gone.
DELETE_SLACK_S = 30.0
# Attempts at the reads that decide a finished stage's exit code (pods) before giving up.
FINISH_READ_ATTEMPTS = 3

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_RUN_ID = "flywheel.dev/run-id"
LABEL_STAGE = "flywheel.dev/stage"


class KubernetesExecutorSettings(BaseSettings):
    """How stage Jobs are built and watched (environment prefix ``FLYWHEEL_TRAINER_K8S_``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAINER_K8S_", extra="ignore")

    namespace: str = Field("flywheel", description="Namespace the stage Jobs are created in.")
    image: str = Field(
        "flywheel:latest",
        description="Image of the stage pods: the worker's own image, so job.command runs there.",
    )
    image_pull_policy: str = Field(
        "IfNotPresent", description="imagePullPolicy of the stage container."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="imagePullSecrets of the stage pods (Secret names), JSON in the environment: "
        '["registry-credentials"]; the worker\'s own, so a private image pulls here too.',
    )
    service_account: str = Field(
        "", description="serviceAccountName of the stage pods; empty: the namespace's default."
    )
    gpu_count: int = Field(1, ge=0, description="GPUs each stage pod asks for; 0: no GPU limit.")
    gpu_resource: str = Field(
        "nvidia.com/gpu", description="Extended resource name the GPU limit is set on."
    )
    cpu_request: str = Field("2", description="CPU request of the stage container (a quantity).")
    memory_request: str = Field(
        "16Gi", description="Memory request of the stage container (a quantity)."
    )
    memory_limit: str = Field(
        "32Gi", description="Memory limit of the stage container (a quantity)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description='nodeSelector of the stage pods, JSON in the environment: {"gpu": "h100"}.',
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations of the stage pods as Kubernetes toleration objects, JSON in the "
        'environment: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}].',
    )
    model_store_claim: str = Field(
        "flywheel-models",
        description="PersistentVolumeClaim of the model store, shared with the worker.",
    )
    model_store_mount: str = Field(
        "/data",
        description="Where the stage pods mount the model store: the path the worker uses, so "
        "job.work_dir means the same in both.",
    )
    env_from_secret: str = Field(
        "",
        description="Secret whose keys become environment variables of the stage; empty: none. "
        "The stage's own variables (job.env) win over the Secret's.",
    )
    ttl_after_finished_s: int = Field(
        3600, ge=0, description="ttlSecondsAfterFinished: finished Jobs are deleted after this."
    )
    poll_s: float = Field(
        2.0, gt=0, description="How often the Job's status and should_stop() are checked."
    )
    stop_grace_s: float = Field(
        30.0,
        ge=0,
        description="Grace period of a stopped stage: time between SIGTERM (the stage saves a "
        "checkpoint) and SIGKILL.",
    )
    log_tail_lines: int = Field(
        50, ge=1, description="Lines of the stage pod's log kept in the run record."
    )

    @field_validator("tolerations")
    @classmethod
    def _tolerations_are_kubernetes_objects(
        cls, tolerations: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        # Fail at start-up on a typo ("efect"), not when the first stage is submitted.
        for toleration in tolerations:
            try:
                V1Toleration.model_validate(toleration)
            except ValidationError as error:
                raise ValueError(f"not a Kubernetes toleration: {toleration}: {error}") from None
        return tolerations


# --- the Job ---------------------------------------------------------------------------------


def job_name(stage: str, run_id: str) -> str:
    """``flywheel-<stage>-<run_id>`` as a DNS-1123 label: lower case, ``[a-z0-9-]``, at most 63
    characters. A name that must be cut keeps a hash of the whole, so long run ids that share
    a prefix still get distinct Jobs. The same stage of the same run always gets the same name
    (that is how a restarted worker finds its Job)."""
    wanted = f"flywheel-{stage}-{run_id}"
    name = re.sub(r"[^a-z0-9]+", "-", wanted.lower()).strip("-")
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:NAME_HASH_LENGTH]
    kept = name[: MAX_NAME_LENGTH - NAME_HASH_LENGTH - 1].rstrip("-")
    return f"{kept}-{digest}"


def label_value(text: str) -> str:
    """``text`` as a valid label value (the exact value is kept in an annotation)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:MAX_NAME_LENGTH]
    return value.strip("-_.")


def stage_labels(job: StageJob) -> dict[str, str]:
    return {
        LABEL_NAME: "flywheel",
        LABEL_COMPONENT: "trainer-stage",
        LABEL_RUN_ID: label_value(job.run_id),
        LABEL_STAGE: label_value(job.stage),
    }


def _resources(settings: KubernetesExecutorSettings) -> V1ResourceRequirements:
    limits = {"memory": settings.memory_limit}
    if settings.gpu_count > 0:
        # Extended resources are limits only; Kubernetes sets the request equal to the limit.
        limits[settings.gpu_resource] = str(settings.gpu_count)
    return V1ResourceRequirements(
        requests={"cpu": settings.cpu_request, "memory": settings.memory_request},
        limits=limits,
    )


def _container(job: StageJob, settings: KubernetesExecutorSettings) -> V1Container:
    env_from = None
    if settings.env_from_secret:
        env_from = [V1EnvFromSource(secret_ref=V1SecretEnvSource(name=settings.env_from_secret))]
    return V1Container(
        name=STAGE_CONTAINER,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        # `command`, not `args`: the argv replaces the image's entrypoint, as a spawn would.
        command=list(job.command),
        # Kubernetes gives `env` precedence over `envFrom`: the stage's variables win.
        env=[V1EnvVar(name=key, value=value) for key, value in job.env.items()] or None,
        env_from=env_from,
        resources=_resources(settings),
        volume_mounts=[
            V1VolumeMount(name=MODEL_STORE_VOLUME, mount_path=settings.model_store_mount)
        ],
        # The restricted Pod Security Standard: the stage needs no privilege at all.
        security_context=V1SecurityContext(
            run_as_non_root=True,
            allow_privilege_escalation=False,
            capabilities=V1Capabilities(drop=["ALL"]),
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        ),
    )


def _pod_spec(job: StageJob, settings: KubernetesExecutorSettings) -> V1PodSpec:
    return V1PodSpec(
        restart_policy="Never",
        containers=[_container(job, settings)],
        volumes=[
            V1Volume(
                name=MODEL_STORE_VOLUME,
                persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.model_store_claim
                ),
            )
        ],
        node_selector=dict(settings.node_selector) or None,
        tolerations=[V1Toleration.model_validate(t) for t in settings.tolerations] or None,
        service_account_name=settings.service_account or None,
        image_pull_secrets=[
            V1LocalObjectReference(name=name) for name in settings.image_pull_secrets
        ]
        or None,
        # Deleting the Job does not pass its grace period on to the pod: the pod's own grace
        # period is what the stage gets between SIGTERM and SIGKILL to save its checkpoint.
        termination_grace_period_seconds=math.ceil(settings.stop_grace_s),
    )


def build_job(job: StageJob, settings: KubernetesExecutorSettings) -> V1Job:
    """The Job that runs ``job`` (no API call: a pure function of its arguments)."""
    labels = stage_labels(job)
    # Label values are cut and cleaned; the annotations keep the exact run id and stage, which
    # is what a 409 Conflict is checked against before a Job is adopted.
    annotations = {LABEL_RUN_ID: job.run_id, LABEL_STAGE: job.stage}
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(
            name=job_name(job.stage, job.run_id),
            namespace=settings.namespace,
            labels=labels,
            annotations=annotations,
        ),
        spec=V1JobSpec(
            backoff_limit=BACKOFF_LIMIT,
            # The stage's time limit (STAGE_TIME_LIMIT_S), enforced by Kubernetes itself.
            active_deadline_seconds=(
                math.ceil(job.time_limit_s) if job.time_limit_s is not None else None
            ),
            ttl_seconds_after_finished=settings.ttl_after_finished_s,
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=labels, annotations=annotations),
                spec=_pod_spec(job, settings),
            ),
        ),
    )


def job_manifest(job: StageJob, settings: KubernetesExecutorSettings) -> dict:
    """The Job as the JSON the API server receives (what ``kubectl apply`` would send)."""
    return ApiClient().sanitize_for_serialization(build_job(job, settings))


# --- reading what the API returns ------------------------------------------------------------


def finished_condition(job: V1Job) -> V1JobCondition | None:
    """The Job's Complete or Failed condition, if it has one. (SuccessCriteriaMet and
    FailureTarget come earlier, while the pod may still be terminating: not the end yet.)"""
    for condition in (job.status and job.status.conditions) or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition
    return None


def _being_deleted(job: V1Job) -> bool:
    return job.metadata is not None and job.metadata.deletion_timestamp is not None


def _newest_pod(pods: list[V1Pod]) -> V1Pod | None:
    """With backoffLimit 0 a Job has one pod; should there be more, the last one counts."""
    if not pods:
        return None
    return max(pods, key=lambda pod: str(pod.metadata.creation_timestamp or ""))


def container_termination(pod: V1Pod) -> tuple[int | None, str]:
    """The stage container's exit code (None if it has not terminated) and its reason."""
    for status in (pod.status and pod.status.container_statuses) or []:
        if status.name != STAGE_CONTAINER:
            continue
        for state in (status.state, status.last_state):
            if state is not None and state.terminated is not None:
                return state.terminated.exit_code, state.terminated.reason or ""
    return None, ""


def _is_transient(error: Exception) -> bool:
    """Errors worth another try: the API server overloaded or restarting, the network."""
    if isinstance(error, ApiException):
        return error.status == 429 or (error.status or 0) >= 500
    return isinstance(error, urllib3.exceptions.HTTPError | OSError)


def _is_not_found(error: Exception) -> bool:
    return isinstance(error, ApiException) and error.status == 404


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}"


def load_cluster_configuration() -> Configuration:
    """The service account's credentials inside a pod, else the kubeconfig (a developer's
    machine, a worker run outside the cluster)."""
    configuration = Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return configuration


# --- the executor ----------------------------------------------------------------------------


class KubernetesExecutor:
    """Runs each :class:`StageJob` as a Kubernetes Job (see the module docstring).

    The Job is watched by polling ``read_namespaced_job_status`` every ``poll_s`` rather than
    with a watch stream: ``should_stop()`` must be checked every ``poll_s`` anyway, which a
    blocking watch would only allow with a server timeout of whole seconds and re-listing on
    every expiry (and 410 Gone); one small GET every two seconds per running stage (there is
    one at a time) costs the API server nothing, and the loop stays simple.
    """

    def __init__(
        self,
        settings: KubernetesExecutorSettings | None = None,
        batch_api: BatchV1Api | None = None,
        core_api: CoreV1Api | None = None,
    ) -> None:
        self.settings = settings or KubernetesExecutorSettings()
        self._batch_api = batch_api
        self._core_api = core_api
        self._apis_lock = threading.Lock()

    # The cluster configuration is loaded on first use, not at construction: building an
    # executor (at start-up, with the other settings) must work where no cluster is configured.
    @property
    def batch_api(self) -> BatchV1Api:
        self._load_apis()
        return self._batch_api

    @property
    def core_api(self) -> CoreV1Api:
        self._load_apis()
        return self._core_api

    def _load_apis(self) -> None:
        with self._apis_lock:
            if self._batch_api is not None and self._core_api is not None:
                return
            api_client = ApiClient(load_cluster_configuration())
            self._batch_api = self._batch_api or BatchV1Api(api_client)
            self._core_api = self._core_api or CoreV1Api(api_client)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def run(self, job: StageJob, should_stop: Callable[[], bool]) -> StageExit:
        manifest = build_job(job, self.settings)
        name = manifest.metadata.name
        self._warn_if_outside_model_store(job)
        if not self._start(manifest, job, should_stop):
            return StageExit(
                exit_code=STOPPED_EXIT_CODE,
                log_tail=f"stopped before Job {name} started",
                stopped=True,
            )
        return self._wait(name, should_stop)

    def _warn_if_outside_model_store(self, job: StageJob) -> None:
        mount = PurePosixPath(self.settings.model_store_mount)
        if not PurePosixPath(job.work_dir.as_posix()).is_relative_to(mount):
            log.warning(
                "stage %s of run %s works in %s, outside the model store mounted at %s: the "
                "worker will not see its result",
                job.stage,
                job.run_id,
                job.work_dir,
                mount,
            )

    # --- starting --------------------------------------------------------------------------

    def _start(self, manifest: V1Job, job: StageJob, should_stop: Callable[[], bool]) -> bool:
        """Create the Job, or adopt the one already there. False if stopped meanwhile."""
        name = manifest.metadata.name
        while True:
            try:
                self.batch_api.create_namespaced_job(
                    self.namespace, manifest, _request_timeout=REQUEST_TIMEOUT_S
                )
                log.info("created Job %s/%s", self.namespace, name)
                return True
            except ApiException as error:
                if error.status != 409:
                    raise
            existing = self._read_job_if_exists(name)
            if existing is None:
                continue  # deleted between our create and our read: create again
            self._check_same_stage(existing, job)
            if not _being_deleted(existing) and not self._failed(existing):
                # Running or complete: a worker restarted while its stage ran. Wait for it.
                log.info("adopted existing Job %s/%s", self.namespace, name)
                return True
            # A failed Job of an earlier attempt (the trainer retries the stage, which resumes
            # from its checkpoint) or one being deleted: it must go before the new one starts.
            log.info("replacing finished or deleted Job %s/%s", self.namespace, name)
            if not _being_deleted(existing):
                self._delete(name)
            if not self._wait_until_gone(name, should_stop):
                return False

    @staticmethod
    def _failed(job: V1Job) -> bool:
        condition = finished_condition(job)
        return condition is not None and condition.type == "Failed"

    def _check_same_stage(self, existing: V1Job, job: StageJob) -> None:
        annotations = (existing.metadata and existing.metadata.annotations) or {}
        if annotations.get(LABEL_RUN_ID) != job.run_id or annotations.get(LABEL_STAGE) != job.stage:
            raise RuntimeError(
                f"Job {self.namespace}/{existing.metadata.name} exists but is not stage "
                f"{job.stage!r} of run {job.run_id!r} (annotations {annotations}): not adopting it"
            )

    def _read_job_if_exists(self, name: str) -> V1Job | None:
        try:
            return self.batch_api.read_namespaced_job(
                name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as error:
            if _is_not_found(error):
                return None
            raise

    def _delete(self, name: str) -> None:
        # Foreground: the Job stays (with a deletionTimestamp) until its pod is gone, so "the
        # Job is gone" means "the stage process has ended and its checkpoint is written".
        options = V1DeleteOptions(
            propagation_policy="Foreground",
            grace_period_seconds=math.ceil(self.settings.stop_grace_s),
        )
        try:
            self.batch_api.delete_namespaced_job(
                name, self.namespace, body=options, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as error:
            if not _is_not_found(error):
                raise

    def _wait_until_gone(self, name: str, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Poll until the Job is gone. False if should_stop() turned true first; TimeoutError
        if the pod outlives its grace period by far (a node that stopped answering)."""
        deadline = time.monotonic() + self.settings.stop_grace_s + DELETE_SLACK_S
        while self._job_still_there(name):
            if should_stop():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Job {self.namespace}/{name} still exists "
                    f"{self.settings.stop_grace_s + DELETE_SLACK_S:.0f} s after its deletion"
                )
            time.sleep(self.settings.poll_s)
        return True

    def _job_still_there(self, name: str) -> bool:
        try:
            return self._read_job_if_exists(name) is not None
        except Exception as error:
            if not _is_transient(error):
                raise
            log.warning("reading Job %s/%s: %s", self.namespace, name, _describe(error))
            return True

    # --- waiting ---------------------------------------------------------------------------

    def _wait(self, name: str, should_stop: Callable[[], bool]) -> StageExit:
        while True:
            if should_stop():
                return self._stop(name)
            try:
                current = self.batch_api.read_namespaced_job_status(
                    name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
                )
            except Exception as error:
                if _is_not_found(error):
                    return StageExit(
                        exit_code=1,
                        log_tail=f"Job {self.namespace}/{name} was deleted before it finished "
                        "(by someone else than this worker)",
                    )
                if not _is_transient(error):
                    raise
                # The stage keeps running whatever the API server does: keep asking.
                log.warning("reading Job %s/%s: %s", self.namespace, name, _describe(error))
            else:
                condition = finished_condition(current)
                if condition is not None:
                    return self._finished(name, condition)
            time.sleep(self.settings.poll_s)

    def _stop(self, name: str) -> StageExit:
        log.info("stopping Job %s/%s", self.namespace, name)
        # Read before deleting: once the Job is gone, so are its pod and the pod's log.
        pod, pod_note = self._stage_pod(name, attempts=1)
        log_tail = self._log_tail(pod) if pod is not None else pod_note
        self._delete(name)
        try:
            self._wait_until_gone(name)
        except TimeoutError as error:
            log.warning("%s", error)
            log_tail = f"{log_tail}\n[kubernetes] {error}".strip()
        return StageExit(exit_code=STOPPED_EXIT_CODE, log_tail=log_tail, stopped=True)

    # --- the end ---------------------------------------------------------------------------

    def _finished(self, name: str, condition: V1JobCondition) -> StageExit:
        succeeded = condition.type == "Complete"
        pod, pod_note = self._stage_pod(name, attempts=FINISH_READ_ATTEMPTS)
        exit_code, termination_reason = (None, "") if pod is None else container_termination(pod)
        if succeeded:
            exit_code = 0 if exit_code is None else exit_code
        elif not exit_code:
            # Failed without a container exit code (killed at the deadline, never scheduled,
            # evicted) or, oddly, with 0: a failure all the same.
            exit_code = 1
        lines = [self._log_tail(pod) if pod is not None else pod_note]
        if not succeeded:
            lines.append(self._failure_note(name, condition, termination_reason))
        log_tail = "\n".join(line for line in lines if line)
        log.info(
            "Job %s/%s ended: %s, exit code %d", self.namespace, name, condition.type, exit_code
        )
        timed_out = not succeeded and condition.reason == "DeadlineExceeded"
        return StageExit(exit_code=exit_code, log_tail=log_tail, timed_out=timed_out)

    def _failure_note(self, name: str, condition: V1JobCondition, termination_reason: str) -> str:
        note = f"[kubernetes] Job {self.namespace}/{name} failed: {condition.reason or 'unknown'}"
        if condition.message:
            note += f": {condition.message}"
        if termination_reason and termination_reason != "Error":
            note += f" (container terminated: {termination_reason})"
        return note

    def _stage_pod(self, name: str, attempts: int) -> tuple[V1Pod | None, str]:
        """The Job's pod, or None and why there is none."""
        for attempt in range(1, attempts + 1):
            try:
                pods = self.core_api.list_namespaced_pod(
                    self.namespace,
                    label_selector=f"job-name={name}",
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except Exception as error:
                if not _is_transient(error) or attempt == attempts:
                    return None, f"(no log tail: listing the Job's pods failed: {_describe(error)})"
                time.sleep(self.settings.poll_s)
            else:
                pod = _newest_pod(pods.items or [])
                return pod, "" if pod is not None else "(no log tail: the Job has no pod)"
        return None, "(no log tail: the Job's pods were not read)"

    def _log_tail(self, pod: V1Pod) -> str:
        """The pod's last lines, or why they are missing (never raises: the exit code counts
        more than the log)."""
        try:
            text = self.core_api.read_namespaced_pod_log(
                pod.metadata.name,
                self.namespace,
                container=STAGE_CONTAINER,
                tail_lines=self.settings.log_tail_lines,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except Exception as error:
            return (
                f"(no log tail: reading pod {pod.metadata.name}'s log failed: {_describe(error)})"
            )
        return (text or "").rstrip("\n")
