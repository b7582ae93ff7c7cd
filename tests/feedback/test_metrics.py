"""What the service exports to Prometheus."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.feedback.metrics import StoreCollector
from tests.feedback.feedback_helpers import serve_group


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
