"""Schema fuzzing of the feedback service's HTTP API (Schemathesis, bounded): whatever a client
sends, no 5xx, and every answer has a documented status and matches its documented schema."""

from __future__ import annotations

import pytest

from services.common.generated.flywheel.v1 import feedback_pb2
from tests.feedback.feedback_helpers import serve_group
from tests.schema_fuzzing import fuzz_api


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path):
    """SQLite only: the rules are the store's, already tested on both databases."""
    return f"sqlite:///{tmp_path / 'feedback.sqlite3'}"


def test_schema_fuzzing_of_the_feedback_api(feedback):
    group = serve_group(feedback.stub, n=3)
    calls = fuzz_api(
        f"http://127.0.0.1:{feedback.server.http_port}", headers=group.auth, max_examples=40
    )
    assert {label.split(" [")[0] for label in calls} >= {
        "POST /v1/feedback",
        "GET /v1/feedback/{event_id}",
        "GET /v1/interactions/{response_id}",
    }
    # Nothing the fuzzer sent broke the store: it still answers and counts.
    assert feedback.stub.Stats(feedback_pb2.StatsRequest()).interactions == 3
