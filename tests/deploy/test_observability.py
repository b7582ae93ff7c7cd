"""The dashboards and alert rules the chart ships (helm/flywheel/files), checked the way
Prometheus and Grafana will read them:

- ``promtool check rules`` accepts rules.yaml, and ``promtool test rules`` passes its unit tests;
- every dashboard is valid JSON, portable (a ``datasource`` variable, never a fixed datasource
  uid), and each of its PromQL expressions parses;
- every metric the dashboards and the rules name is exported, under that exact name and with
  the labels they select on, by the real services: ``flywheel up`` starts each as its own
  process on loopback (so a metric counts only where its own service exports it), a chat and
  a thumb make the labelled series appear, and the test scrapes every ``/metrics``.

promtool comes from Debian's ``prometheus`` package, which tools/test-services.sh installs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from services.cli.stack_services import SERVICE_NAMES
from tests.harness import (
    STACK_PORT_VARIABLES,
    add_tiny_reward_model,
    empty_redis_db,
    free_ports,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "helm" / "flywheel" / "files"
RULES = FILES / "prometheus" / "rules.yaml"
RULES_TEST = FILES / "prometheus" / "rules_test.yaml"
DASHBOARD_DIR = FILES / "dashboards"
DASHBOARDS = ("serving", "feedback", "trainer")
OBSERVABILITY_REDIS_DB = 12  # a database of its own (see tests/harness.py's empty_redis_db)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's `prometheus` package "
    "(tools/test-services.sh up does it)",
)

# Labels Prometheus itself (or a ServiceMonitor) puts on every scraped series; a dashboard or
# rule may select or group on them although no service exports them.
TARGET_LABELS = {"namespace", "instance", "job", "pod", "service", "container", "endpoint"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# ---- reading the rules and the dashboards --------------------------------------------------------


def load_rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def load_dashboard(name: str) -> dict:
    return json.loads((DASHBOARD_DIR / f"{name}.json").read_text())


def dashboard_queries(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every query a dashboard runs: panel targets and annotations."""
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"{board['uid']}: {panel['title']}", target["expr"]))
    for annotation in board["annotations"]["list"]:
        queries.append((f"{board['uid']}: annotation {annotation['name']}", annotation["expr"]))
    return queries


# Grafana's range variables only appear inside [...]; any duration makes the expression PromQL.
GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)\b")


def as_promql(expr: str) -> str:
    return GRAFANA_RANGES.sub("5m", expr)


@dataclass
class References:
    """What PromQL expressions name: metrics, the labels each selector matches on, and the labels
    they aggregate or join on."""

    selectors: dict[str, set[str]] = field(default_factory=dict)  # metric -> matched labels
    grouping: dict[str, set[str]] = field(default_factory=dict)  # expression -> its labels
    label_replace_targets: set[str] = field(default_factory=set)


STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RANGE = re.compile(r"\[[^\]]*\]")
# A name not glued to a number (6h, 1e3) and not a function call.
IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf"}
KEYWORDS |= {"nan", "group_left", "group_right"}
# label_replace(v, "dst", "replacement", "src", "regex"): the labels it creates.
LABEL_REPLACE_TARGET = re.compile(
    r'label_replace\s*\(.*?,\s*"([a-zA-Z_]\w*)"\s*,\s*"[^"]*"\s*,\s*"\w*"\s*,\s*"[^"]*"\s*\)', re.S
)


def references(expressions: list[str]) -> References:
    found = References()
    for expr in expressions:
        found.label_replace_targets |= set(LABEL_REPLACE_TARGET.findall(expr))
        grouping = set()
        for labels in GROUPING.findall(expr):
            grouping |= {label.strip() for label in labels.split(",") if label.strip()}
        found.grouping[expr] = grouping
        for name, matchers in SELECTOR.findall(expr):
            assert name, f"a selector without a metric name in {expr!r}: name the metric"
            found.selectors.setdefault(name, set()).update(MATCHER_LABEL.findall(matchers))
        # The bare names: strip label matchers, strings, ranges and grouping lists first.
        bare = GROUPING.sub(" ", RANGE.sub(" ", STRING.sub(" ", SELECTOR.sub(r" \1 ", expr))))
        for name in IDENTIFIER.findall(bare):
            if name.lower() not in KEYWORDS:
                found.selectors.setdefault(name, set())
    return found


def test_the_reference_parser_on_a_known_expression():
    """The checks below lean on this parser; it must see through joins, strings and ranges."""
    expr = (
        'sum by (namespace) (rate(a_total{route="/x", status=~"5.."}[5m])) / ignoring(route) '
        "histogram_quantile(0.9, sum by (le) (rate(b_bucket[$__rate_interval]))) offset 6h "
        'and on (instance) label_replace(c == 1, "model_version", "$1", "version", "(.+)") '
        "unless count(d_x:y) > bool 2"
    )
    found = references([as_promql(expr)])
    assert found.selectors == {
        "a_total": {"route", "status"},
        "b_bucket": set(),
        "c": set(),
        "d_x:y": set(),
    }
    assert found.grouping[as_promql(expr)] == {"namespace", "route", "le", "instance"}
    assert found.label_replace_targets == {"model_version"}


# ---- promtool ------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_rules():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_every_alert_says_how_bad_what_and_for_how_long():
    """What Alertmanager routing and the on-call person rely on: a severity to route by, a
    summary and a description to read, and a ``for:`` so one bad scrape pages nobody."""
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert len(alerts) >= 8
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name} has no for:"
        assert alert.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        assert set(alert.get("annotations", {})) >= {"summary", "description"}, name


@needs_promtool
def test_the_rules_unit_tests_pass():
    tested = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rules_unit_tests_check_firing_and_silence():
    """The thumbs-drop and stalled-ingestion alerts are tested both ways: an evaluation where
    each fires, and one where it must stay silent."""
    cases = [
        case
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in ("FlywheelThumbsUpDropAfterPromotion", "FlywheelFeedbackIngestionStalled"):
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == alert]
        assert any(expected) and not all(expected), alert


# ---- the dashboards ------------------------------------------------------------------------------

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


def datasource_refs(node) -> Iterator[object]:
    """Every ``datasource`` value anywhere in a dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_portable(name):
    """Imported into any Grafana (by the sidecar or by hand) it asks which Prometheus to use:
    a fixed datasource uid would point at a datasource that exists only where it was made."""
    board = load_dashboard(name)
    assert board["uid"] == f"flywheel-{name}" and board["title"]
    assert board["schemaVersion"] >= 36
    assert "__inputs" not in board  # an "export for sharing" artefact the sidecar cannot fill in
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    refs = list(datasource_refs(board))
    assert refs and all(ref == DATASOURCE_REF for ref in refs), {
        json.dumps(r) for r in refs if r != DATASOURCE_REF
    }
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@needs_promtool
def test_every_dashboard_query_parses_as_promql(tmp_path):
    """promtool parses each query as a recording rule's expression (Grafana's $__range and
    $__rate_interval replaced by a duration), so a typo fails here, not on someone's screen."""
    rules = []
    for name in DASHBOARDS:
        for where, expr in dashboard_queries(load_dashboard(name)):
            rules.append({"record": f"dashboard_query_{len(rules)}", "expr": as_promql(expr)})
            print(f"dashboard_query_{len(rules) - 1}: {where}")
    check = tmp_path / "dashboard_queries.yaml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = promtool("check", "rules", str(check))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ---- every metric named is exported by the real services -------------------------------------

# Families a chat and a thumb cannot put a series into: they move only when a training stage
# ends or the gateway fails to record an answer. Their names must still be declared (# TYPE) by
# the running service; their labels are read from the definitions in the service's own metrics
# module. (The trainer's run, promotion and rollback counters are not here: their series exist
# at 0 from start-up, so that increase() sees the first run, promotion or rollback.)
EMPTY_AFTER_ONE_CHAT = {
    "flywheel_trainer_stage_seconds_bucket",
    "flywheel_trainer_stage_seconds_sum",
    "flywheel_trainer_stage_seconds_count",
    "flywheel_gateway_record_errors_total",
}
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}
METRIC_MODULES = [
    "services.common.metrics",
    "services.inference.engine.metrics",
    "services.inference.gateway.metrics",
    "services.inference.gateway.http_metrics",
    "services.feedback.metrics",
    "services.reward.metrics",
    "services.trainer.metrics",
]


@dataclass
class Exported:
    """Sample names a set of scrapes exports, their label names, and which service exports them."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    declared_only: set[str] = field(default_factory=set)  # a # TYPE line, no sample yet
    service: dict[str, str] = field(default_factory=dict)

    def add(self, service: str, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.labels.setdefault(sample.name, set()).update(sample.labels)
                self.service[sample.name] = service
            if not family.samples:
                for suffix in SUFFIXES.get(family.type, ("",)):
                    self.declared_only.add(family.name + suffix)
                    self.service[family.name + suffix] = service

    def names(self) -> set[str]:
        return set(self.labels) | self.declared_only


def defined_label_names() -> dict[str, set[str]]:
    """Label names of every metric the services define, by exported sample name, read from the
    metric objects themselves (prometheus_client keeps them in ``_labelnames``)."""
    import importlib

    labels: dict[str, set[str]] = {}
    for module_name in METRIC_MODULES:
        module = importlib.import_module(module_name)
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                for suffix in SUFFIXES.get(metric._type, ("",)):
                    extra = {"le"} if suffix == "_bucket" else set()
                    labels[metric._name + suffix] = set(metric._labelnames) | extra
    return labels


SERVICES = list(SERVICE_NAMES)  # every process `flywheel up` starts
METRICS_PORT = {  # where each service serves /metrics: its HTTP port, or a port of its own
    "feedback": "FLYWHEEL_FEEDBACK_HTTP_PORT",
    "reward": "FLYWHEEL_REWARD_METRICS_PORT",
    "engine": "FLYWHEEL_ENGINE_HTTP_PORT",
    "gateway": "FLYWHEEL_GATEWAY_HTTP_PORT",
    "trainer-control": "FLYWHEEL_TRAINER_CONTROL_METRICS_PORT",
    "trainer-train": "FLYWHEEL_TRAINER_TRAIN_METRICS_PORT",
    "trainer-beat": "FLYWHEEL_TRAINER_BEAT_METRICS_PORT",
}


class LocalStack:
    """`flywheel up` / `down` on free loopback ports, a temporary data dir and the tiny models."""

    def __init__(self, tmp_path: Path, store_root: Path, redis_url: str) -> None:
        self.data_dir = tmp_path / "data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
        self.env.update(
            FLYWHEEL_DATA_DIR=str(self.data_dir),
            FLYWHEEL_MODEL_STORE=str(store_root),
            FLYWHEEL_REDIS_URL=redis_url,
            FLYWHEEL_ENGINE_DEVICE="cpu",
            FLYWHEEL_REWARD_DEVICE="cpu",
            FLYWHEEL_STACK_READY_TIMEOUT_S="90",
        )
        ports = free_ports(len(STACK_PORT_VARIABLES))
        self.env.update(zip(STACK_PORT_VARIABLES, map(str, ports), strict=True))
        for service in ("FEEDBACK", "REWARD", "ENGINE", "GATEWAY"):
            self.env[f"FLYWHEEL_{service}_DRAIN_TIMEOUT_S"] = "1"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def url(self, port_variable: str) -> str:
        return f"http://127.0.0.1:{self.env[port_variable]}"

    def metrics(self, service: str) -> str:
        reply = httpx.get(f"{self.url(METRICS_PORT[service])}/metrics", timeout=10)
        reply.raise_for_status()
        return reply.text


@pytest.fixture
def local_stack(tmp_path, model_store, tiny_model_dir, redis_url) -> Iterator[LocalStack]:
    add_tiny_reward_model(model_store, tiny_model_dir, promote=True)
    stack = LocalStack(
        tmp_path, model_store.root, empty_redis_db(redis_url, OBSERVABILITY_REDIS_DB)
    )
    try:
        up = stack("up", "--only", *SERVICES)
        assert up.returncode == 0, up.stdout + up.stderr
        yield stack
    finally:
        down = stack("down")
        print(down.stdout, down.stderr)


def make_traffic(stack: LocalStack) -> None:
    """One chat reranked by the reward model, one streamed chat, one thumb on an answer, one
    refused thumb, one request the engine refuses: each creates labelled series."""
    key = (stack.data_dir / "dev-api-key").read_text().strip()
    client = openai.OpenAI(
        base_url=f"{stack.url('FLYWHEEL_GATEWAY_HTTP_PORT')}/v1", api_key=key, max_retries=0
    )
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(
        model="policy", messages=messages, max_tokens=4, extra_body={"best_of": 2}
    )
    response_id = reply.choices[0].model_extra["response_id"]
    chunks = list(
        client.chat.completions.create(model="policy", messages=messages, max_tokens=4, stream=True)
    )
    assert chunks

    feedback = httpx.Client(base_url=stack.url("FLYWHEEL_FEEDBACK_HTTP_PORT"), timeout=10)
    auth = {"Authorization": f"Bearer {key}"}
    with feedback:
        # The gateway records the answer in the background: the thumb is accepted once it arrived.
        def thumb_accepted() -> bool:
            thumb = {"kind": "thumb", "response_id": response_id, "value": 1}
            if feedback.post("/v1/feedback", json=thumb, headers=auth).status_code == 201:
                return True
            time.sleep(0.2)  # each early try is refused (and counted): no need to hurry them
            return False

        wait_for(thumb_accepted, 20, "the thumb to be accepted")
        unknown = {"kind": "thumb", "response_id": "resp_unknown", "value": -1}
        assert feedback.post("/v1/feedback", json=unknown, headers=auth).status_code >= 400
    invalid = {"inputs": "Hi", "parameters": {"max_new_tokens": 0}}
    engine = httpx.post(f"{stack.url('FLYWHEEL_ENGINE_HTTP_PORT')}/generate", json=invalid)
    assert engine.status_code == 422


def test_every_metric_named_is_exported_by_a_running_service(local_stack):
    make_traffic(local_stack)
    # The feedback service reads its gauges from the database when scraped, cached for 5 s.
    wait_for(
        lambda: "flywheel_feedback_thumbs_up_ratio{" in local_stack.metrics("feedback"),
        15,
        "the feedback service's thumbs gauges",
    )
    # A trainer worker creates its run counters when Celery imports its tasks, a moment after
    # its /metrics (what `flywheel up` waits for) answers.
    wait_for(
        lambda: "flywheel_trainer_runs_total{" in local_stack.metrics("trainer-train"),
        15,
        "the train worker's run counters",
    )
    exported = Exported()
    for service in SERVICES:
        text = local_stack.metrics(service)
        # Each scrape is the service's own process: its build info says which service it is.
        build = re.search(r'^flywheel_build_info\{[^}]*service="([\w-]+)"', text, re.M)
        assert build and build.group(1) == service.split("-")[0], (service, build)
        exported.add(service, text)

    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    expressions = [rule["expr"] for rule in rules]
    for name in DASHBOARDS:
        board = load_dashboard(name)
        expressions += [as_promql(expr) for _, expr in dashboard_queries(board)]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":  # label_values(metric, label): Grafana, not PromQL
                query = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
                expressions.append(query.group(1))
    found = references(expressions)

    named = set(found.selectors) - recorded
    assert len(named) > 50  # the parser found the dashboards' and rules' metrics at all
    missing = sorted(named - exported.names())
    assert not missing, f"named in dashboards or rules, exported by no service: {missing}"
    # A family with no sample yet is fine only where one chat and one thumb cannot make one
    # (a family some process only declares is fine where another exports its series: the
    # trainer's beat, say, declares what its workers count).
    no_series = exported.declared_only - set(exported.labels)
    unexercised = sorted((named & no_series) - EMPTY_AFTER_ONE_CHAT)
    assert not unexercised, f"declared but no series after a chat and a thumb: {unexercised}"

    # The labels they select on exist on those metrics ...
    defined = defined_label_names()
    labels_of = {name: exported.labels.get(name) or defined.get(name, set()) for name in named}
    for name in named:
        wrong = found.selectors[name] - labels_of[name] - TARGET_LABELS
        assert not wrong, f"{name} ({exported.service[name]}) has no label {sorted(wrong)}"
    # ... and so do the labels they aggregate or join on, on some metric of the expression.
    recorded_labels = set().union(*(found.grouping[r["expr"]] for r in rules if "record" in r))
    for expr, grouping in found.grouping.items():
        own = references([expr])
        available = TARGET_LABELS | own.label_replace_targets
        for name in own.selectors:
            available |= recorded_labels if name in recorded else labels_of[name]
        assert grouping <= available, f"{sorted(grouping - available)} on no metric of {expr!r}"
