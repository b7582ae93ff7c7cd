"""What the service exports to Prometheus."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.feedback import metrics
from services.feedback.metrics import StoreCollector
from tests.feedback.feedback_helpers import serve_group
from tests.harness import FeedbackService


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a /metrics text, or None if absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


def test_counters_and_latency_on_metrics(feedback):
    group = serve_group(feedback.stub)
    before = feedback.http.get("/metrics").text
    accepted0 = (
        sample(before, "flywheel_feedback_events_total", kind="thumb", outcome="accepted") or 0
    )
    feedback.http.post(
        "/v1/feedback",
        json={"kind": "thumb", "response_id": group.response_ids[0], "value": 1},
        headers=group.auth,
    )
    feedback.http.post(
        "/v1/feedback",
        json={"kind": "thumb", "response_id": "nope", "value": 1},
        headers=group.auth,
    )
    text = feedback.http.get("/metrics").text
    assert (
        sample(text, "flywheel_feedback_events_total", kind="thumb", outcome="accepted")
        == accepted0 + 1
    )
    assert (
        sample(text, "flywheel_feedback_refusals_total", kind="thumb", code="unknown_response") >= 1
    )
    assert (
        sample(
            text,
            "flywheel_feedback_request_duration_seconds_count",
            api="http",
            route="/v1/feedback",
            status="201",
        )
        >= 1
    )


def test_store_gauges_come_from_the_database(feedback):
    registry = CollectorRegistry()
    registry.register(StoreCollector(feedback.core.metrics_stats, max_age_s=0))
    for version, values in (("v1", [1, 1, -1]), ("v2", [1])):
        group = serve_group(feedback.stub, n=len(values), model_version=version)
        for response_id, value in zip(group.response_ids, values, strict=True):
            feedback.http.post(
                "/v1/feedback",
                json={"kind": "thumb", "response_id": response_id, "value": value},
                headers=group.auth,
            )
    text = generate_latest(registry).decode()
    assert sample(text, "flywheel_feedback_thumbs_up_ratio", model_version="v1") == 2 / 3
    assert sample(text, "flywheel_feedback_thumbs_up_ratio", model_version="v2") == 1.0
    assert sample(text, "flywheel_feedback_thumbs", model_version="v1", direction="down") == 1
    assert sample(text, "flywheel_feedback_comparisons_pending") == 2  # v1: two ups x one down
    assert sample(text, "flywheel_feedback_interactions") == 4
    assert sample(text, "flywheel_feedback_outbox_backlog") is not None


def test_accepted_events_are_counted_by_the_policy_version_they_judge(feedback):
    # A version label of its own: these counters live as long as the test process.
    version = f"v-{uuid.uuid4().hex[:12]}"
    group = serve_group(feedback.stub, n=2, model_version=version)
    a, b = group.response_ids
    thumb = {"kind": "thumb", "response_id": a, "value": 1, "client_event_id": "tap-1"}
    votes = [
        (thumb, 201),
        (thumb, 200),  # the client's retry: a replay, not a second event
        ({"kind": "ranking", "ranking": [[b], [a]]}, 201),
        ({"kind": "pairwise", "response_a": a, "response_b": b, "outcome": "a"}, 201),
    ]
    for body, status in votes:
        reply = feedback.http.post("/v1/feedback", json=body, headers=group.auth)
        assert reply.status_code == status, reply.text

    text = feedback.http.get("/metrics").text
    for kind in ("thumb", "ranking", "pairwise"):
        counted = sample(
            text, "flywheel_feedback_accepted_by_version_total", kind=kind, model_version=version
        )
        assert counted == 1, kind


def test_every_kind_and_outcome_is_exported_from_start_up(service_settings):
    """At 0 before the first event, so that increase() counts that event too."""
    metrics.EVENTS.clear()  # forget earlier tests' series: only the start-up may create them
    service = FeedbackService(service_settings).start()
    try:
        text = service.http.get("/metrics").text
    finally:
        service.close()
    for kind in ("thumb", "ranking", "pairwise"):
        for outcome in ("accepted", "replayed", "refused"):
            events = sample(text, "flywheel_feedback_events_total", kind=kind, outcome=outcome)
            assert events == 0, (kind, outcome)
