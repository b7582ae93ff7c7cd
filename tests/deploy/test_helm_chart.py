"""The Helm chart (helm/flywheel), rendered and linted by Helm's own library.

tools/render-k8s.py installs the chart into a fake API server through helm-sdkpy (Helm v4), so
the values are checked against values.schema.json and the templates rendered exactly as
`helm install` would; these tests read what came out.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.api_keys import ApiKeyStore
from tests.deploy.helm_support import (
    CHART,
    KUBERNETES_VERSIONS,
    REPO,
    VALUES_FILES,
    containers,
    env_of,
    pod_spec,
    render,
    render_k8s,
    render_named,
    validate,
    values_of,
    workloads,
)

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
EXECUTOR_SOURCE = REPO / "services" / "trainer" / "executors" / "kubernetes.py"
KUBERNETES_EXECUTOR = {"trainer": {"executor": "kubernetes"}}


def decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


# --- lint and render ---------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", sorted(VALUES_FILES))
def test_helm_lint_passes(values_file):
    result = render_k8s().lint(values_of(values_file))

    # Info findings (an icon is recommended) are fine; warnings and errors are not.
    assert not result.errors and not result.warnings, result.messages


@pytest.mark.parametrize(
    "values",
    [
        *(values_of(name) for name in sorted(VALUES_FILES)),
        {"engine": {"backend": "vllm"}},
        {"engine": {"backend": "tgi", "gpu": {"enabled": True}}},
        {"gateway": {"spool": {"persistence": {"enabled": True}}}, **KUBERNETES_EXECUTOR},
        {
            "ingress": {"enabled": True, "hosts": ["flywheel.example.com"]},
            "networkPolicy": {"publicFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
            "gateway": {"autoscaling": {"enabled": True}},
        },
    ],
    ids=[*sorted(VALUES_FILES), "vllm", "tgi-gpu", "stateful-gateway", "ingress-hpa"],
)
def test_every_rendered_object_is_valid_kubernetes(values):
    release = render(values)

    for obj in release.manifests + release.hooks:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator CRDs: no Kubernetes schema (checked below)
        for version in KUBERNETES_VERSIONS:
            validate(obj, version)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"engine": {"backend": "llamacpp"}},
            ["at '/engine/backend': value must be one of 'builtin', 'vllm', 'tgi'"],
        ),
        (
            {"engine": {"replicaCount": "2"}},
            ["at '/engine/replicaCount': got string, want integer"],
        ),
        (
            {"gateway": {"image": {"tag": 1.5}}},
            ["at '/gateway/image/tag': got number, want string"],
        ),
        (
            {"engine": {"replicas": 2}},
            ["at '/engine'", "additional properties 'replicas' not allowed"],
        ),
        # A port the chart wires itself: set twice, the two would disagree.
        ({"engine": {"settings": {"http_port": 9000}}}, ["at '/engine/settings/http_port'"]),
        ({"trainer": {"settings": {"k8s_image": "x"}}}, ["at '/trainer/settings/k8s_image'"]),
        # Beat is one replica by design: there is no value to change it.
        ({"trainer": {"beat": {"replicaCount": 2}}}, ["additional properties 'replicaCount'"]),
        ({"trainer": {"executor": "slurm"}}, ["at '/trainer/executor': value must be one of"]),
    ],
    ids=[
        "unknown-backend",
        "wrong-type",
        "tag-number",
        "unknown-key",
        "wired-setting",
        "executor-setting",
        "beat-replicas",
        "unknown-executor",
    ],
)
def test_bad_values_are_rejected_by_the_schema_with_a_clear_message(values, expected):
    module = render_k8s()
    with pytest.raises(module.RenderError) as refused:
        module.render(values)

    message = str(refused.value)
    assert "values don't meet the specifications of the schema" in message
    for part in expected:
        assert part in message, message
    # helm lint refuses the same values (its library reports where, not the message).
    assert any(m["Path"] == "values.yaml" for m in module.lint(values).errors)


def test_required_external_settings_fail_with_a_message():
    module = render_k8s()
    with pytest.raises(
        module.RenderError, match="externalRedis.url or externalRedis.existingSecret"
    ):
        module.render({"redis": {"enabled": False}})


# --- values.yaml and values.schema.json --------------------------------------------------------


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _drift(values: Any, schema: dict, root: dict, path: str) -> list[str]:
    """Where values.yaml and the schema disagree about which keys exist, below ``path``."""
    schema = _resolve(schema, root)
    if not isinstance(values, dict) or "properties" not in schema:
        return []  # a leaf, or a free-form map (labels, settings) the schema types as a whole
    declared = {k for k, v in schema["properties"].items() if v is not False}
    problems = []
    for key in sorted(set(values) - declared):
        if schema.get("additionalProperties") is False:
            problems.append(f"{path}.{key} is in values.yaml but not in the schema")
    for key in sorted(declared - set(values)):
        problems.append(f"{path}.{key} is in the schema but not in values.yaml")
    for key in sorted(set(values) & declared):
        problems += _drift(values[key], schema["properties"][key], root, f"{path}.{key}")
    return problems


def _undocumented(schema: Any, root: dict, path: str, seen: set[str]) -> list[str]:
    """Schema properties without a description (values.schema.json documents every value)."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        if "description" not in schema and "description" not in _resolve(schema, root):
            return [path]
        if schema["$ref"] in seen:
            return []
        seen = seen | {schema["$ref"]}
        schema = _resolve(schema, root)
    missing = []
    for key, sub in (schema.get("properties") or {}).items():
        if sub is False:
            continue
        if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
            missing.append(f"{path}.{key}")
        missing += _undocumented(sub, root, f"{path}.{key}", seen)
    return missing


def test_values_and_schema_do_not_drift_apart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    assert _drift(values, schema, schema, "") == []
    assert _undocumented(schema, schema, "", set()) == []


def test_drift_check_finds_a_value_missing_from_the_schema_and_the_other_way():
    # The check itself must be able to fail.
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"a": {"description": "x"}, "b": {"description": "y"}},
    }
    assert _drift({"a": 1, "c": 2}, schema, schema, "") == [
        ".c is in values.yaml but not in the schema",
        ".b is in the schema but not in values.yaml",
    ]


SETTINGS_CLASSES = {
    "engine": ("services.inference.engine.settings", "EngineSettings"),
    "gateway": ("services.inference.gateway.settings", "GatewaySettings"),
    "feedback": ("services.feedback.settings", "FeedbackSettings"),
    "reward": ("services.reward.settings", "RewardSettings"),
    "trainer": ("services.trainer.settings", "TrainerSettings"),
}


@pytest.mark.parametrize("service", sorted(SETTINGS_CLASSES))
def test_settings_maps_name_real_settings_fields(service):
    module_name, class_name = SETTINGS_CLASSES[service]
    settings_class = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    fields = set(settings_class.model_fields)
    schema = json.loads((CHART / "values.schema.json").read_text())
    refused = {
        k
        for k, v in schema["properties"][service]["properties"]["settings"]["properties"].items()
        if v is False
    }

    # The names the chart wires itself are real fields (else refusing them protects nothing).
    assert refused <= fields, refused - fields
    for name in sorted(VALUES_FILES):
        given = set(((values_of(name) or {}).get(service) or {}).get("settings") or {})
        given |= set(yaml.safe_load((CHART / "values.yaml").read_text())[service]["settings"])
        assert given <= fields, f"{name}: {service}.settings has no field {given - fields}"


def test_settings_become_environment_variables_the_settings_classes_read():
    release = render(
        {
            "feedback": {"settings": {"stream_maxlen": 1000000, "cors_origins": ["https://a.b"]}},
            "engine": {"settings": {"stall_timeout_s": 90.5}},
        }
    )
    feedback = env_of(
        release.find("Deployment", "flywheel-feedback")["spec"]["template"]["spec"]["containers"][0]
    )
    engine = env_of(
        release.find("Deployment", "flywheel-engine")["spec"]["template"]["spec"]["containers"][0]
    )

    # Whole numbers stay integers (YAML numbers reach templates as floats: 1e+06), lists are JSON.
    assert feedback["FLYWHEEL_FEEDBACK_STREAM_MAXLEN"]["value"] == "1000000"
    assert json.loads(feedback["FLYWHEEL_FEEDBACK_CORS_ORIGINS"]["value"]) == ["https://a.b"]
    assert engine["FLYWHEEL_ENGINE_STALL_TIMEOUT_S"]["value"] == "90.5"
    from services.feedback.settings import FeedbackSettings

    parsed = FeedbackSettings.model_validate(
        {"stream_maxlen": "1000000", "cors_origins": ["https://a.b"]}
    )
    assert parsed.stream_maxlen == 1_000_000


# --- what the objects say ----------------------------------------------------------------------


@pytest.mark.parametrize("values_file", sorted(VALUES_FILES))
def test_every_object_carries_the_standard_labels(values_file):
    release = render_named(values_file)

    for obj in release.manifests + release.hooks:
        labels = obj["metadata"].get("labels") or {}
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "flywheel"
    for obj in workloads(release):
        if obj["kind"] == "Pod":
            continue
        selector = obj["spec"]["selector"]["matchLabels"]
        template_labels = obj["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template_labels.items(), obj["metadata"]["name"]


@pytest.mark.parametrize("values_file", sorted(VALUES_FILES))
def test_beat_has_exactly_one_replica_and_is_recreated(values_file):
    release = render_named(values_file)
    beat = release.find("Deployment", "flywheel-trainer-beat")

    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    train = release.find("Deployment", "flywheel-trainer-train")
    assert train["spec"]["strategy"] == {"type": "Recreate"}


# The Kubernetes API call behind each client method the executor uses: (API group, resource,
# verb). A method missing here fails the test below: add it here and to the Role.
CLIENT_METHOD_PERMISSIONS = {
    "create_namespaced_job": ("batch", "jobs", "create"),
    "read_namespaced_job": ("batch", "jobs", "get"),
    "read_namespaced_job_status": ("batch", "jobs/status", "get"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
}


def _executor_api_calls() -> set[str]:
    """Methods the executor calls on its BatchV1Api and CoreV1Api (self.batch_api.X(...))."""
    calls = set()
    for node in ast.walk(ast.parse(EXECUTOR_SOURCE.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr in ("batch_api", "core_api")
        ):
            calls.add(node.func.attr)
    return calls


def test_trainer_role_grants_exactly_what_the_kubernetes_executor_calls():
    calls = _executor_api_calls()
    assert calls, "found no API calls in the executor: the scan is broken"
    unknown = calls - set(CLIENT_METHOD_PERMISSIONS)
    assert not unknown, f"the executor calls {unknown}: map them and grant them in the Role"
    needed = {CLIENT_METHOD_PERMISSIONS[call] for call in calls}

    release = render(KUBERNETES_EXECUTOR)
    [role] = release.of_kind("Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == needed
    [binding] = release.of_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    [subject] = binding["subjects"]
    train = pod_spec(release.find("Deployment", "flywheel-trainer-train"))
    assert train["serviceAccountName"] == subject["name"]
    assert train["automountServiceAccountToken"] is True
    # Only the train worker holds a token; no other pod can call the API server.
    for obj in workloads(release):
        if obj["metadata"]["name"] not in ("flywheel-trainer-train",):
            assert pod_spec(obj)["automountServiceAccountToken"] is False, obj["metadata"]["name"]


def test_no_role_without_the_kubernetes_executor():
    release = render()
    assert release.of_kind("Role") == [] and release.of_kind("RoleBinding") == []


@pytest.mark.parametrize(
    "values",
    [None, values_of("values-gpu.yaml"), {"engine": {"backend": "vllm"}}],
    ids=["default", "gpu", "vllm"],
)
def test_every_container_runs_unprivileged(values):
    release = render(values)

    for obj in workloads(release):
        pod = pod_spec(obj)
        for container in containers(obj):
            where = f"{obj['metadata']['name']}/{container['name']}"
            context = container.get("securityContext") or {}
            non_root = context.get(
                "runAsNonRoot", (pod.get("securityContext") or {}).get("runAsNonRoot")
            )
            assert non_root is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            third_party_engine = (
                container["name"] == "engine" and "flywheel" not in container["image"]
            )
            # vLLM and TGI write caches of their own; every Flywheel process and the stateful
            # services run on a read-only root filesystem.
            assert context["readOnlyRootFilesystem"] is (not third_party_engine), where


def test_gpu_values_schedule_the_engine_on_a_gpu_with_shm_and_a_long_startup():
    release = render_named("values-gpu.yaml")
    engine = release.find("Deployment", "flywheel-engine")
    pod = pod_spec(engine)
    [container] = pod["containers"]

    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    # Readiness apart from liveness: a long queue never restarts the engine.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    # Autoscaling: the HPA owns the replica count, on the engine's queue.
    assert "replicas" not in engine["spec"]
    hpa = release.find("HorizontalPodAutoscaler", "flywheel-engine")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "flywheel-engine",
    }
    [queue] = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert queue["pods"]["metric"]["name"] == "tgi_queue_size"
    settings = release.find("Secret", "flywheel-trainer-env")["stringData"]
    assert settings["FLYWHEEL_TRAINER_EXECUTOR"] == "kubernetes"
    assert "FLYWHEEL_TRAINER_CANARY_SHARE" not in settings  # the built-in engine: the default


@pytest.mark.parametrize("backend", ["vllm", "tgi"])
def test_with_vllm_or_tgi_a_new_policy_is_promoted_without_a_canary(backend):
    """They serve the promoted policy only, so a canary would get no traffic and be promoted
    at its longest wait on no evidence; an operator's own canary_share still wins."""
    release = render({"engine": {"backend": backend, "gpu": {"enabled": True}}})
    settings = release.find("Secret", "flywheel-trainer-env")["stringData"]
    assert settings["FLYWHEEL_TRAINER_CANARY_SHARE"] == "0"
    chosen = render(
        {
            "engine": {"backend": backend, "gpu": {"enabled": True}},
            "trainer": {"settings": {"canary_share": 0.1}},
        }
    )
    settings = chosen.find("Secret", "flywheel-trainer-env")["stringData"]
    assert settings["FLYWHEEL_TRAINER_CANARY_SHARE"] == "0.1"


@pytest.mark.parametrize("backend", ["vllm", "tgi"])
def test_vllm_and_tgi_serve_the_promoted_policy_from_the_model_store(backend):
    release = render({"engine": {"backend": backend, "gpu": {"enabled": True}}})
    pod = pod_spec(release.find("Deployment", "flywheel-engine"))
    [container] = pod["containers"]
    launcher = release.find("ConfigMap", "flywheel-engine-launcher")["data"]["serve-promoted.sh"]

    assert container["image"].startswith(
        "vllm/vllm-openai:"
        if backend == "vllm"
        else "ghcr.io/huggingface/text-generation-inference:"
    )
    assert container["command"][-1] == backend
    assert "state.json" in launcher and "--port 8080" in launcher
    assert env_of(container)["FLYWHEEL_MODEL_STORE"]["value"] == "/data/models"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The gateway still talks to the engine Service on the same port.
    gateway = env_of(pod_spec(release.find("Deployment", "flywheel-gateway"))["containers"][0])
    assert gateway["FLYWHEEL_GATEWAY_ENGINE_URL"]["value"] == "http://flywheel-engine:8080"


def test_external_values_use_the_given_secrets_and_run_no_redis_or_postgresql():
    release = render_named("values-external.yaml")

    assert release.of_kind("StatefulSet") == []
    feedback = env_of(pod_spec(release.find("Deployment", "flywheel-feedback"))["containers"][0])
    assert feedback["FLYWHEEL_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "flywheel-redis",
        "key": "redis-url",
    }
    assert feedback["FLYWHEEL_FEEDBACK_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "flywheel-database",
        "key": "feedback-database-url",
    }
    trainer = env_of(
        pod_spec(release.find("Deployment", "flywheel-trainer-train"))["containers"][0]
    )
    assert trainer["FLYWHEEL_TRAINER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == (
        "trainer-database-url"
    )


def test_database_urls_of_the_release_postgresql_compose_the_password_secret():
    release = render()

    for name, service in (
        ("flywheel-feedback", "FEEDBACK"),
        ("flywheel-trainer-control", "TRAINER"),
    ):
        env = pod_spec(release.find("Deployment", name))["containers"][0]["env"]
        names = [item["name"] for item in env]
        url = next(
            item["value"] for item in env if item["name"] == f"FLYWHEEL_{service}_DATABASE_URL"
        )
        # $(VAR) is expanded only from variables defined earlier in the list.
        assert names.index("FLYWHEEL_POSTGRESQL_PASSWORD") < names.index(
            f"FLYWHEEL_{service}_DATABASE_URL"
        )
        database = "feedback" if service == "FEEDBACK" else "trainer"
        assert url == (
            "postgresql+psycopg://flywheel:$(FLYWHEEL_POSTGRESQL_PASSWORD)"
            f"@flywheel-postgresql:5432/{database}"
        )
    init = release.find("ConfigMap", "flywheel-postgresql-init")["data"]
    assert "CREATE DATABASE trainer OWNER flywheel;" in init["10-trainer-database.sql"]


def test_generated_credentials_and_existing_secrets():
    release = render()
    token = release.find("Secret", "flywheel-service-token")
    assert token["metadata"]["annotations"]["flywheel.dev/generated-credential"] == "true"
    assert len(decoded(token, "service-token")) == 48
    # Random per install (a fresh render, not the cached one), never a fixed default.
    again = render_k8s().render().find("Secret", "flywheel-service-token")
    assert decoded(again, "service-token") != decoded(token, "service-token")

    mine = render(
        {
            "auth": {"existingSecret": "my-token", "existingSecretKey": "token"},
            "postgresql": {"auth": {"existingSecret": "my-db"}},
        }
    )
    assert not [
        s
        for s in mine.of_kind("Secret")
        if s["metadata"]["name"] in ("flywheel-service-token", "flywheel-postgresql")
    ]
    for obj in workloads(mine):
        for container in containers(obj):
            ref = env_of(container).get("FLYWHEEL_SERVICE_TOKEN")
            if ref:
                assert ref["valueFrom"]["secretKeyRef"] == {"name": "my-token", "key": "token"}
    postgres = env_of(pod_spec(mine.find("StatefulSet", "flywheel-postgresql"))["containers"][0])
    assert postgres["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-db"


def test_the_api_key_file_lets_the_helm_test_key_in(tmp_path):
    record = {
        "id": "key_" + "0" * 24,
        "sha256": "1" * 64,
        "name": "alice",
        "created_at": "2026-01-01T00:00:00+00:00",
        "rate_limit_requests_per_minute": None,
        "rate_limit_burst": None,
    }
    release = render({"gateway": {"apiKeys": {"records": [record]}}})
    key = decoded(release.find("Secret", "flywheel-test-api-key"), "api-key")
    keys_file = tmp_path / "api-keys.json"
    keys_file.write_text(decoded(release.find("Secret", "flywheel-api-keys"), "api-keys.json"))

    # Read by the gateway's own key store: the generated key authenticates, the listed record
    # is there, and a wrong key does not get in.
    store = ApiKeyStore(keys_file)
    assert key.startswith("fwk_")
    assert store.authenticate(key).name == "helm-test"
    assert store.get("key_" + "0" * 24).name == "alice"
    assert store.authenticate("fwk_" + "x" * 43) is None
    assert hashlib.sha256(key.encode()).hexdigest() == store.authenticate(key).sha256
    # The gateway reads the file from the Secret's volume.
    gateway = pod_spec(release.find("Deployment", "flywheel-gateway"))
    [volume] = [v for v in gateway["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "flywheel-api-keys"
    assert env_of(gateway["containers"][0])["FLYWHEEL_GATEWAY_API_KEYS_FILE"]["value"] == (
        "/etc/flywheel/api-keys/api-keys.json"
    )


@pytest.mark.parametrize("values_file", sorted(VALUES_FILES))
def test_network_policies_admit_exactly_the_clients_of_redis_and_postgresql(values_file):
    release = render_named(values_file)
    policies = {p["metadata"]["name"]: p for p in release.of_kind("NetworkPolicy")}

    for obj in workloads(release):
        if obj["kind"] == "Pod" or obj["metadata"]["name"] in (
            "flywheel-redis",
            "flywheel-postgresql",
        ):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        env = {name for c in containers(obj) for name in env_of(c)} | {
            key
            for c in containers(obj)
            for ref in c.get("envFrom", [])
            for key in release.find("Secret", ref["secretRef"]["name"]).get("stringData", {})
        }
        uses_redis = "FLYWHEEL_REDIS_URL" in env
        uses_postgres = "FLYWHEEL_POSTGRESQL_PASSWORD" in env
        name = obj["metadata"]["name"]
        assert (labels.get("flywheel.dev/redis-client") == "true") is uses_redis, name
        if "flywheel-postgresql" in policies:
            assert (labels.get("flywheel.dev/postgresql-client") == "true") is uses_postgres, name
    for store, label in (("redis", "redis-client"), ("postgresql", "postgresql-client")):
        policy = policies.get(f"flywheel-{store}")
        if policy is None:
            assert not [s for s in release.of_kind("StatefulSet") if store in s["metadata"]["name"]]
            continue
        [rule] = policy["spec"]["ingress"]
        [peer] = rule["from"]
        assert peer["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/instance": "flywheel",
            f"flywheel.dev/{label}": "true",
        }
    # Only the public APIs are open to anyone.
    for name, policy in policies.items():
        for rule in policy["spec"]["ingress"]:
            if "from" not in rule:
                assert (name, rule["ports"]) in (
                    ("flywheel-gateway", [{"port": "http"}]),
                    ("flywheel-feedback", [{"port": "http"}]),
                ), name


def test_monitoring_objects_embed_the_dashboards_and_rules_files():
    release = render(
        {
            "metrics": {
                "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                "prometheusRule": {"enabled": True},
                "grafanaDashboards": {
                    "namespace": "monitoring",
                    "labelKey": "dash",
                    "labelValue": "yes",
                },
            }
        }
    )
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    configmaps = [c for c in release.of_kind("ConfigMap") if "-dashboard-" in c["metadata"]["name"]]

    assert len(configmaps) == len(dashboards)
    for path, configmap in zip(
        dashboards, sorted(configmaps, key=lambda c: c["metadata"]["name"]), strict=True
    ):
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert configmap["metadata"]["labels"]["dash"] == "yes"
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())
    rules_file = CHART / "files" / "prometheus" / "rules.yaml"
    rules = release.of_kind("PrometheusRule")
    if rules_file.exists():
        [rule] = rules
        assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    else:
        assert rules == []
    monitors = {m["metadata"]["name"]: m for m in release.of_kind("ServiceMonitor")}
    services = {s["metadata"]["name"]: s for s in release.of_kind("Service")}
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kps"
        service = services[name]
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # Every Flywheel process is scraped (redis and postgresql have no exporter here).
    assert set(monitors) == {
        n for n in services if n not in ("flywheel-redis", "flywheel-postgresql")
    }


def test_dashboards_use_the_default_sidecar_label():
    release = render()
    dashboards = [c for c in release.of_kind("ConfigMap") if "-dashboard-" in c["metadata"]["name"]]
    for configmap in dashboards:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["namespace"] == "flywheel"


def test_notes_warn_about_missing_resources_and_mutable_tags():
    quiet = render()
    # null deletes a default (resources: {} would merge into them).
    noisy = render(
        {"engine": {"image": {"tag": "latest"}, "resources": {"requests": None, "limits": None}}}
    )

    assert "WARNINGS" not in quiet.notes
    assert "engine has no resources" in noisy.notes
    assert 'engine uses the mutable tag "latest"' in noisy.notes
    pinned = render({"engine": {"image": {"tag": "latest", "digest": "sha256:" + "a" * 64}}})
    assert "mutable tag" not in pinned.notes
    assert "port-forward svc/flywheel-gateway" in quiet.notes


def test_extra_objects_and_ingress():
    release = render(
        {
            "extraObjects": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "{{ .Release.Name }}-extra"},
                },
            ],
            "ingress": {"enabled": True, "className": "nginx", "hosts": ["chat.example.com"]},
        }
    )

    assert release.find("ConfigMap", "flywheel-extra")
    [ingress] = release.of_kind("Ingress")
    paths = {
        p["path"]: p["backend"]["service"]["name"]
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
    }
    assert paths == {
        "/v1/feedback": "flywheel-feedback",
        "/v1/interactions": "flywheel-feedback",
        "/": "flywheel-gateway",
    }


# --- helm test ---------------------------------------------------------------------------------


class _FakeApis(BaseHTTPRequestHandler):
    """The gateway and the feedback API as the test pod sees them; the feedback side answers
    404 twice (the answer not recorded yet) before accepting the thumb."""

    calls: list[tuple[str, str, dict | None, str | None]] = []
    refusals_left = 2
    chat_status = 200

    def log_message(self, *_args) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path, None, self.headers.get("Authorization")))
        self._reply(200, b"# TYPE flywheel_x counter\nflywheel_x 1\n", "text/plain")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, body, self.headers.get("Authorization")))
        if self.path == "/v1/chat/completions" and self.chat_status != 200:
            self._reply(self.chat_status, b'{"error": {"code": "engine_unavailable"}}')
        elif self.path == "/v1/chat/completions":
            answer = {
                "choices": [
                    {
                        "index": 0,
                        "response_id": "resp_1",
                        "message": {"role": "assistant", "content": "Hello"},
                    }
                ]
            }
            self._reply(200, json.dumps(answer).encode())
        elif type(self).refusals_left > 0:
            type(self).refusals_left -= 1
            self._reply(404, b'{"error": {"code": "unknown_response"}}')
        else:
            self._reply(201, b'{"id": "evt_1"}')


@contextmanager
def fake_apis(monkeypatch, chat_status: int = 200):
    """The fake APIs on loopback, with the pod's environment pointing at them."""
    _FakeApis.calls, _FakeApis.refusals_left, _FakeApis.chat_status = [], 2, chat_status
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApis)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("GATEWAY_URL", url)
    monkeypatch.setenv("FEEDBACK_URL", url)
    monkeypatch.setenv("API_KEY", "fwk_test")
    monkeypatch.setattr("time.sleep", lambda _s: None)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def pod_script() -> str:
    [pod] = render().hooks
    return pod["spec"]["containers"][0]["command"][2]


def run_script(script: str) -> None:
    exec(compile(script, "helm-test", "exec"), {"__name__": "__main__"})


def test_the_helm_test_pod_chats_thumbs_and_reads_metrics(monkeypatch, capfd):
    [pod] = render().hooks
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "flywheel-gateway:0.1.0"  # Python, no torch
    env = env_of(container)
    assert env["GATEWAY_URL"]["value"] == "http://flywheel-gateway:8000"
    assert env["FEEDBACK_URL"]["value"] == "http://flywheel-feedback:8001"
    assert env["API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "flywheel-test-api-key"
    assert container["command"][:2] == ["python", "-c"]

    # The pod's script against fake APIs that refuse the thumb twice: it retries, then passes.
    with fake_apis(monkeypatch):
        run_script(container["command"][2])

    posts = [(path, body) for method, path, body, _ in _FakeApis.calls if method == "POST"]
    assert posts[0][0] == "/v1/chat/completions"
    assert posts[-1] == (
        "/v1/feedback",
        {
            "kind": "thumb",
            "response_id": "resp_1",
            "value": "up",
            "client_event_id": "helm-test-resp_1",
        },
    )
    assert len(posts) == 1 + 3  # the chat, two refused thumbs, the accepted one
    assert all(auth == "Bearer fwk_test" for m, _, _, auth in _FakeApis.calls if m == "POST")
    assert [path for method, path, _, _ in _FakeApis.calls if method == "GET"] == ["/metrics"] * 2
    assert capfd.readouterr().out.strip().endswith("ok")


def test_the_helm_test_pod_fails_when_the_chat_fails(monkeypatch, capfd):
    with fake_apis(monkeypatch, chat_status=503), pytest.raises(SystemExit) as failed:
        run_script(pod_script())

    assert failed.value.code == 1
    assert "FAIL: chat: HTTP 503" in capfd.readouterr().err
    assert not [call for call in _FakeApis.calls if call[1] == "/v1/feedback"]


def test_no_test_pod_when_tests_are_off():
    release = render({"tests": {"enabled": False}})
    assert release.hooks == []
    assert [s for s in release.of_kind("Secret") if "test-api-key" in s["metadata"]["name"]] == []


def test_chart_files_are_where_the_docs_say():
    # The operator guide and the chart point at each other.
    guide = (REPO / "docs" / "deploy.md").read_text()
    for name in (
        "values-gpu.yaml",
        "values-external.yaml",
        "helm test",
        "helm rollback",
        "helm upgrade",
        "grafana_dashboard",
        "docker/Dockerfile",
    ):
        assert name in guide, name
    assert Path(CHART / "Chart.yaml").exists()
