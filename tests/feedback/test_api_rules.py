"""The rules of POST /v1/feedback, each with the exact error a client gets, on SQLite and
PostgreSQL, against the real service on loopback."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from services.common.credentials import new_api_key
from services.common.generated.flywheel.v1 import feedback_pb2
from tests.feedback.feedback_helpers import serve_group


def post(feedback, body, headers=None):
    return feedback.http.post("/v1/feedback", json=body, headers=headers or {})


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_thumb_with_api_key_is_recorded(feedback):
    group = serve_group(feedback.stub)
    response = post(
        feedback,
        {"kind": "thumb", "response_id": group.response_ids[0], "value": "up", "comment": "nice"},
        group.auth,
    )
    assert response.status_code == 201
    event = response.json()
    assert event["kind"] == "thumb" and event["value"] == 1 and event["comment"] == "nice"
    assert event["status"] == "current" and event["via"] == "api_key"
    assert response.headers["location"] == f"/v1/feedback/{event['id']}"
    assert feedback.http.get(f"/v1/feedback/{event['id']}", headers=group.auth).json() == event


def test_thumb_reasons_are_recorded_and_unknown_or_repeated_ones_refused(feedback):
    group = serve_group(feedback.stub)
    body = {"kind": "thumb", "response_id": group.response_ids[0], "value": "down"}

    recorded = post(feedback, {**body, "reasons": ["not_factual", "too_long"]}, group.auth)
    assert recorded.status_code == 201
    assert recorded.json()["reasons"] == ["not_factual", "too_long"]
    stored = feedback.http.get(f"/v1/feedback/{recorded.json()['id']}", headers=group.auth)
    assert stored.json()["reasons"] == ["not_factual", "too_long"]

    for reasons, problem in ((["boring"], "Input should be"), (["unsafe", "unsafe"], "once")):
        refused = post(feedback, {**body, "reasons": reasons}, group.auth)
        assert refused.status_code == 422
        error = error_of(refused)
        assert error["code"] == "invalid_request"
        assert error["details"]["errors"][0]["field"].startswith("body.thumb.reasons"), error
        assert problem in error["details"]["errors"][0]["problem"]


def test_feedback_token_rates_without_the_api_key(feedback):
    group = serve_group(feedback.stub)
    body = {
        "kind": "pairwise",
        "response_a": group.response_ids[0],
        "response_b": group.response_ids[1],
        "outcome": "b",
    }
    via_header = post(feedback, body, {"X-Feedback-Token": group.feedback_token})
    assert via_header.status_code == 201
    assert via_header.json()["via"] == "feedback_token"
    assert via_header.json()["comparison"]["pairs"] == 1
    via_body = post(feedback, {**body, "outcome": "a", "feedback_token": group.feedback_token})
    assert via_body.status_code == 201
    assert via_body.json()["replaces"] == via_header.json()["id"]


def test_unauthenticated_and_foreign_keys_are_refused(feedback):
    group = serve_group(feedback.stub)
    body = {"kind": "thumb", "response_id": group.response_ids[0], "value": -1}
    missing = post(feedback, body)
    assert missing.status_code == 401
    assert error_of(missing)["code"] == "unauthenticated"
    foreign = post(feedback, body, {"Authorization": f"Bearer {new_api_key()}"})
    assert foreign.status_code == 403
    assert error_of(foreign) == {
        "code": "not_your_response",
        "message": "this was served to another API key; only the key that received an answer "
        "(or its feedback token) may rate or read it",
        "details": {"response_ids": [group.response_ids[0]]},
    }
    other = serve_group(feedback.stub)
    wrong_token = post(feedback, body, {"X-Feedback-Token": other.feedback_token})
    assert wrong_token.status_code == 403
    assert error_of(wrong_token)["code"] == "invalid_feedback_token"
    bad_scheme = post(feedback, body, {"Authorization": f"Basic {group.api_key}"})
    assert bad_scheme.status_code == 401
    assert error_of(bad_scheme)["code"] == "bad_authorization"
    # Nothing of the refused requests was stored.
    assert feedback.stub.Stats(feedback_pb2.StatsRequest()).feedback_events.thumbs == 0


def test_unknown_response_is_404(feedback):
    group = serve_group(feedback.stub)
    response = post(feedback, {"kind": "thumb", "response_id": "resp_nope", "value": 1}, group.auth)
    assert response.status_code == 404
    assert error_of(response) == {
        "code": "unknown_response",
        "message": "no answer was served with these ids",
        "details": {"response_ids": ["resp_nope"]},
    }


def test_expired_answer_is_410(feedback):
    served_long_ago = datetime.now(UTC) - timedelta(
        seconds=feedback.core.settings.feedback_ttl_s + 60
    )
    group = serve_group(feedback.stub, created_at=served_long_ago)
    response = post(
        feedback, {"kind": "thumb", "response_id": group.response_ids[0], "value": 1}, group.auth
    )
    assert response.status_code == 410
    error = error_of(response)
    assert error["code"] == "feedback_window_closed"
    assert error["details"] == {
        "response_ids": [group.response_ids[0]],
        "ttl_seconds": feedback.core.settings.feedback_ttl_s,
    }


def test_retry_with_the_same_client_event_id_is_replayed(feedback):
    group = serve_group(feedback.stub)
    body = {
        "kind": "thumb",
        "response_id": group.response_ids[1],
        "value": 1,
        "client_event_id": "click-42",
    }
    first = post(feedback, body, group.auth)
    retry = post(feedback, body, group.auth)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    stats = feedback.stub.Stats(feedback_pb2.StatsRequest())
    assert stats.feedback_events.thumbs == 1


def test_retries_sent_at_once_record_one_event(feedback):
    # Sent together they usually share a write batch, where PostgreSQL's first attempt
    # assumes each id is new and the unique constraint must sort them out.
    group = serve_group(feedback.stub)
    body = {
        "kind": "thumb",
        "response_id": group.response_ids[0],
        "value": -1,
        "client_event_id": "double-click",
    }
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(feedback, body, group.auth), range(4)))

    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    stats = feedback.stub.Stats(feedback_pb2.StatsRequest())
    assert stats.feedback_events.thumbs == 1


def test_reusing_a_client_event_id_for_another_request_is_409(feedback):
    group = serve_group(feedback.stub)
    body = {
        "kind": "thumb",
        "response_id": group.response_ids[1],
        "value": 1,
        "client_event_id": "click-43",
    }
    first = post(feedback, body, group.auth)
    clash = post(feedback, {**body, "value": -1}, group.auth)
    assert clash.status_code == 409
    assert error_of(clash) == {
        "code": "client_event_id_reused",
        "message": "this client_event_id was already used for a different feedback request",
        "details": {"client_event_id": "click-43", "event_id": first.json()["id"]},
    }


def test_a_later_vote_replaces_the_earlier_one(feedback):
    group = serve_group(feedback.stub)
    a, b = group.response_ids[:2]
    up = post(feedback, {"kind": "thumb", "response_id": a, "value": 1}, group.auth).json()
    down_b = post(feedback, {"kind": "thumb", "response_id": b, "value": -1}, group.auth).json()
    assert down_b["comparison"]["pairs"] == 1  # a up, b down: a > b
    changed = post(feedback, {"kind": "thumb", "response_id": a, "value": -1}, group.auth)
    assert changed.status_code == 201
    assert changed.json()["replaces"] == up["id"]
    assert changed.json()["comparison"] is None  # both down now: no pair left
    earlier = feedback.http.get(f"/v1/feedback/{up['id']}", headers=group.auth).json()
    assert earlier["status"] == "replaced" and earlier["replaced_by"] == changed.json()["id"]
    stats = feedback.stub.Stats(feedback_pb2.StatsRequest())
    assert stats.feedback_events.thumbs == 3  # every vote is kept ...
    assert stats.comparisons_pending == 0  # ... but only current votes make comparisons
    assert [(t.model_version, t.thumbs_up, t.thumbs_down) for t in stats.thumbs] == [("v0", 0, 2)]


def test_votes_of_different_kinds_do_not_replace_each_other(feedback):
    group = serve_group(feedback.stub, n=2)
    a, b = group.response_ids
    post(feedback, {"kind": "thumb", "response_id": a, "value": 1}, group.auth)
    pair = post(
        feedback, {"kind": "pairwise", "response_a": a, "response_b": b, "outcome": "a"}, group.auth
    )
    assert pair.json()["replaces"] is None
    again = post(
        feedback, {"kind": "pairwise", "response_a": b, "response_b": a, "outcome": "a"}, group.auth
    )
    assert again.json()["replaces"] == pair.json()["id"]  # same pair, either order


def test_ranking_gives_all_pairs_with_ties_skipped(feedback):
    group = serve_group(feedback.stub, n=4)
    r = group.response_ids
    response = post(
        feedback, {"kind": "ranking", "ranking": [[r[2]], [r[0], r[3]], [r[1]]]}, group.auth
    )
    assert response.status_code == 201
    assert response.json()["comparison"]["pairs"] == 5  # C(4,2) = 6 minus the tie


def test_ranking_must_cover_exactly_the_group(feedback):
    group = serve_group(feedback.stub, n=3)
    r = group.response_ids
    partial = post(feedback, {"kind": "ranking", "ranking": [[r[0]], [r[1]]]}, group.auth)
    assert partial.status_code == 422
    assert error_of(partial) == {
        "code": "ranking_incomplete",
        "message": "a ranking must place every candidate of the group",
        "details": {"missing": [r[2]], "candidate_group": group.candidate_group},
    }
    twice = post(
        feedback, {"kind": "ranking", "ranking": [[r[0]], [r[1], r[0]], [r[2]]]}, group.auth
    )
    assert twice.status_code == 422
    assert error_of(twice)["code"] == "duplicate_response"
    other = serve_group(feedback.stub, api_key=group.api_key, n=2)
    mixed = post(
        feedback,
        {"kind": "ranking", "ranking": [[r[0], r[1], r[2]], [other.response_ids[0]]]},
        group.auth,
    )
    assert mixed.status_code == 422
    assert error_of(mixed)["code"] == "mixed_candidate_groups"


def test_ranking_waits_for_every_answer_of_the_group(feedback):
    group = serve_group(feedback.stub, n=3, record=2)  # the third is still in the gateway's spool
    r = group.response_ids
    response = post(feedback, {"kind": "ranking", "ranking": [[r[0]], [r[1]]]}, group.auth)
    assert response.status_code == 409
    assert error_of(response)["code"] == "group_incomplete"


def test_pairwise_tie_and_both_bad_are_kept_without_pairs(feedback):
    group = serve_group(feedback.stub, n=2)
    a, b = group.response_ids
    for outcome in ("tie", "both_bad"):
        response = post(
            feedback,
            {"kind": "pairwise", "response_a": a, "response_b": b, "outcome": outcome},
            group.auth,
        )
        assert response.status_code == 201
        assert response.json()["comparison"] is None
    stats = feedback.stub.Stats(feedback_pb2.StatsRequest())
    assert stats.feedback_events.pairwise == 2 and stats.comparisons_pending == 0


def test_schema_errors_name_the_field(feedback):
    group = serve_group(feedback.stub)
    cases = [
        ({"kind": "thumb", "response_id": group.response_ids[0], "value": 2}, "body.thumb.value"),
        ({"kind": "stars", "response_id": group.response_ids[0]}, "body"),
        (
            {"kind": "pairwise", "response_a": "x", "response_b": "x", "outcome": "a"},
            "body.pairwise",
        ),
        ({"kind": "ranking", "ranking": [["x"], []]}, "body.ranking.ranking.1"),
        ({"kind": "ranking", "ranking": [["x"]]}, "body.ranking"),
        (
            {"kind": "thumb", "response_id": group.response_ids[0], "value": True},
            "body.thumb.value",
        ),
        ({"kind": "thumb", "response_id": group.response_ids[0], "value": "1"}, "body.thumb.value"),
        (
            {"kind": "thumb", "response_id": group.response_ids[0], "value": 1, "extra": 1},
            "body.thumb.extra",
        ),
    ]
    for body, field in cases:
        response = post(feedback, body, group.auth)
        assert response.status_code == 422, body
        error = error_of(response)
        assert error["code"] == "invalid_request"
        assert [e["field"] for e in error["details"]["errors"]] == [field], error
    not_json = feedback.http.post(
        "/v1/feedback", content=b"{", headers={**group.auth, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and error_of(not_json)["code"] == "invalid_request"


def test_oversized_body_and_comment_are_refused(feedback):
    group = serve_group(feedback.stub)
    limit = feedback.core.settings.max_comment_chars
    long_comment = post(
        feedback,
        {
            "kind": "thumb",
            "response_id": group.response_ids[0],
            "value": 1,
            "comment": "x" * (limit + 1),
        },
        group.auth,
    )
    assert long_comment.status_code == 422
    assert error_of(long_comment)["code"] == "comment_too_long"
    huge = post(
        feedback,
        {
            "kind": "thumb",
            "response_id": group.response_ids[0],
            "value": 1,
            "comment": "x" * feedback.core.settings.max_body_bytes,
        },
        group.auth,
    )
    assert huge.status_code == 413 and error_of(huge)["code"] == "body_too_large"


def test_reading_interactions_and_events_needs_the_same_credential(feedback):
    group = serve_group(feedback.stub)
    rid = group.response_ids[0]
    mine = feedback.http.get(f"/v1/interactions/{rid}", headers=group.auth)
    assert mine.status_code == 200
    body = mine.json()
    assert body["answer"] == "answer 0 to Name a colour." and "feedback_token" not in body
    assert "feedback_token_hash" not in body
    by_token = feedback.http.get(
        f"/v1/interactions/{rid}", headers={"X-Feedback-Token": group.feedback_token}
    )
    assert by_token.status_code == 200
    foreign = feedback.http.get(
        f"/v1/interactions/{rid}", headers={"Authorization": f"Bearer {new_api_key()}"}
    )
    assert foreign.status_code == 403
    unknown = feedback.http.get("/v1/feedback/fb_nope", headers=group.auth)
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "unknown_feedback"
    route = feedback.http.get("/v1/nothing-here")
    assert route.status_code == 404 and error_of(route)["code"] == "not_found"


def test_openapi_documents_the_api(feedback):
    spec = feedback.http.get("/openapi.json").json()
    assert {"/v1/feedback", "/v1/feedback/{event_id}", "/v1/interactions/{response_id}"} <= set(
        spec["paths"]
    )
    kinds = spec["components"]["schemas"]
    assert {"ThumbFeedback", "RankingFeedback", "PairwiseFeedback", "ErrorResponse"} <= set(kinds)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_browsers_of_allowed_origins_may_post_with_the_token(service_settings, request):
    service_settings.cors_origins = ["http://chat.example"]
    feedback = request.getfixturevalue("feedback")
    preflight = feedback.http.options(
        "/v1/feedback",
        headers={
            "Origin": "http://chat.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-feedback-token",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://chat.example"
    other = feedback.http.options(
        "/v1/feedback",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers
