"""The gRPC side (feedback.proto) against the real service: RecordInteraction, GetInteraction,
ExportComparisons and Stats, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
import sqlalchemy as sa

from services.common.credentials import api_key_id
from services.common.generated.flywheel.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from services.common.grpc_errors import field_violations
from services.common.service_auth import service_channel
from services.feedback.store.tables import export_snapshots
from tests.feedback.feedback_helpers import serve_group
from tests.harness import assert_refused_without_credential, wait_for


def interaction(**overrides) -> feedback_pb2.Interaction:
    fields = dict(
        response_id="resp_1",
        conversation_id="conv_1",
        messages=[common_pb2.ChatMessage(role="user", content="Hi")],
        answer="Hello!",
        candidate_group="grp_1",
        candidate_index=0,
        candidate_count=1,
        model_version="v3",
        sampling=common_pb2.SamplingParams(temperature=0.7, seed=11, stop=["\n\n"]),
        api_key_id="key_abc",
        feedback_token="fwt_secret",
    )
    fields.update(overrides)
    return feedback_pb2.Interaction(**fields)


def record(feedback, item):
    return feedback.stub.RecordInteraction(feedback_pb2.RecordInteractionRequest(interaction=item))


def test_record_interaction_is_idempotent_on_response_id(feedback):
    assert record(feedback, interaction()).created is True
    assert record(feedback, interaction()).created is False
    with pytest.raises(grpc.RpcError) as conflict:
        record(feedback, interaction(answer="Something else"))
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "response_id_conflict" in conflict.value.details()
    with pytest.raises(grpc.RpcError) as clash:
        record(feedback, interaction(response_id="resp_2"))  # same group and index
    assert clash.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert feedback.stub.Stats(feedback_pb2.StatsRequest()).interactions == 1


def test_record_interaction_names_every_bad_field(feedback):
    bad = interaction(
        response_id="",
        feedback_token="",
        messages=[common_pb2.ChatMessage(role="robot", content="x")],
        candidate_index=2,
        candidate_count=2,
    )
    with pytest.raises(grpc.RpcError) as error:
        record(feedback, bad)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(error.value)} == {
        "interaction.response_id",
        "interaction.feedback_token",
        "interaction.messages[0].role",
        "interaction.candidate_index",
    }


def test_get_interaction_returns_it_without_the_token(feedback):
    record(feedback, interaction())
    got = feedback.stub.GetInteraction(feedback_pb2.GetInteractionRequest(response_id="resp_1"))
    expected = interaction()
    expected.feedback_token = ""
    got.interaction.ClearField("created_at")
    assert got.interaction == expected
    with pytest.raises(grpc.RpcError) as missing:
        feedback.stub.GetInteraction(feedback_pb2.GetInteractionRequest(response_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _rank_all(feedback, group, order):
    body = {"kind": "ranking", "ranking": [[group.response_ids[i]] for i in order]}
    response = feedback.http.post("/v1/feedback", json=body, headers=group.auth)
    assert response.status_code == 201, response.text
    return response.json()


def _export(feedback, **window) -> list[feedback_pb2.ComparisonPage]:
    return list(feedback.stub.ExportComparisons(feedback_pb2.ExportComparisonsRequest(**window)))


def test_export_streams_pages_with_one_snapshot_and_totals(feedback):
    groups = [serve_group(feedback.stub, n=3, prompt=f"prompt {i}") for i in range(5)]
    for group in groups:
        _rank_all(feedback, group, [2, 0, 1])
    pages = _export(feedback, page_size=2)
    assert [p.page_index for p in pages] == [0, 1, 2]
    assert [p.last for p in pages] == [False, False, True]
    assert len({p.snapshot_id for p in pages}) == 1
    assert (pages[-1].total_groups, pages[-1].total_pairs) == (5, 15)
    exported = [g for p in pages for g in p.groups]
    assert [g.prompt[0].content for g in exported] == [f"prompt {i}" for i in range(5)]
    first = exported[0]
    assert first.source == feedback_pb2.FEEDBACK_KIND_RANKING
    assert [c.response_id for c in first.candidates] == groups[0].response_ids
    assert [c.text for c in first.candidates][2] == "answer 2 to prompt 0"
    # Ranked 2 > 0 > 1: candidate 2 beats both, 0 beats 1.
    assert sorted((p.better, p.worse) for p in first.pairs) == [(0, 1), (2, 0), (2, 1)]
    assert first.api_key_id == api_key_id(groups[0].api_key)


def test_empty_export_is_one_empty_last_page(feedback):
    pages = _export(feedback)
    assert len(pages) == 1 and pages[0].last and not pages[0].groups
    assert pages[0].total_groups == 0 and pages[0].snapshot_id


def test_an_export_window_replays_exactly_after_later_votes(feedback):
    group = serve_group(feedback.stub, n=3)
    _rank_all(feedback, group, [0, 1, 2])
    first = _export(feedback)
    until = first[-1].until
    # The same rater changes their mind after the export: the old window must not change ...
    _rank_all(feedback, group, [2, 1, 0])
    replay = _export(feedback, until=until)
    assert [g.pairs for p in replay for g in p.groups] == [g.pairs for p in first for g in p.groups]
    # ... and the next window carries the new revision under the same comparison id.
    later = _export(feedback, since=until)
    [old] = [g for p in first for g in p.groups]
    [new] = [g for p in later for g in p.groups]
    assert new.comparison_id == old.comparison_id and new.pairs != old.pairs
    with feedback.core.read_engine.connect() as conn:
        rows = conn.execute(
            sa.select(export_snapshots).order_by(export_snapshots.c.created_at)
        ).all()
    assert [r.id for r in rows] == [
        first[0].snapshot_id,
        replay[0].snapshot_id,
        later[0].snapshot_id,
    ]
    assert rows[0].content_sha256 == rows[1].content_sha256 != rows[2].content_sha256


def test_export_refuses_an_empty_window(feedback):
    now = datetime.now(UTC)
    stamp = feedback_pb2.ExportComparisonsRequest().since
    stamp.FromDatetime(now)
    with pytest.raises(grpc.RpcError) as error:
        _export(feedback, since=stamp, until=stamp)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stats_count_pending_comparisons_since_a_time(feedback):
    old = serve_group(feedback.stub, n=2, model_version="v1")
    _rank_all(feedback, old, [0, 1])
    until = _export(feedback)[-1].until
    new = serve_group(feedback.stub, n=3, model_version="v10")
    _rank_all(feedback, new, [0, 1, 2])
    feedback.http.post(
        "/v1/feedback",
        json={"kind": "thumb", "response_id": new.response_ids[0], "value": 1},
        headers=new.auth,
    )
    everything = feedback.stub.Stats(feedback_pb2.StatsRequest())
    assert (everything.comparison_groups_pending, everything.comparisons_pending) == (2, 4)
    since = feedback.stub.Stats(feedback_pb2.StatsRequest(comparisons_since=until))
    assert (since.comparison_groups_pending, since.comparisons_pending) == (1, 3)
    assert since.interactions == 5
    assert (since.feedback_events.ranking, since.feedback_events.thumbs) == (2, 1)
    assert [(t.model_version, t.thumbs_up) for t in since.thumbs] == [("v10", 1)]


def _thumb(feedback, group, index: int, value: int) -> None:
    response = feedback.http.post(
        "/v1/feedback",
        json={"kind": "thumb", "response_id": group.response_ids[index], "value": value},
        headers=group.auth,
    )
    assert response.status_code == 201, response.text


def test_stats_count_thumbs_given_since_a_time_by_version(feedback):
    """The canary watch compares two versions' thumbs over the same period."""
    before = serve_group(feedback.stub, n=2, model_version="v1")
    _thumb(feedback, before, 0, 1)
    _thumb(feedback, before, 1, -1)

    def thumbs(request):
        return [
            (t.model_version, t.thumbs_up, t.thumbs_down)
            for t in feedback.stub.Stats(request).thumbs
        ]

    everything = feedback_pb2.StatsRequest()
    wait_for(lambda: thumbs(everything) == [("v1", 1, 1)], 10, "the first thumbs")
    start = feedback_pb2.StatsRequest().thumbs_since
    start.FromDatetime(datetime.now(UTC))
    during = serve_group(feedback.stub, n=2, model_version="v1")
    canary = serve_group(feedback.stub, n=1, model_version="v2")
    _thumb(feedback, during, 0, 1)
    _thumb(feedback, canary, 0, -1)
    _thumb(feedback, before, 1, 1)  # changed its mind: the new vote counts, the old one not

    wait_for(lambda: thumbs(everything) == [("v1", 3, 0), ("v2", 0, 1)], 10, "the new thumbs")
    assert thumbs(feedback_pb2.StatsRequest(thumbs_since=start)) == [("v1", 2, 0), ("v2", 0, 1)]


def test_every_internal_call_without_the_service_credential_is_refused(feedback):
    group = serve_group(feedback.stub, n=2)
    _rank_all(feedback, group, [0, 1])
    pending = feedback.stub.Stats(feedback_pb2.StatsRequest()).comparisons_pending
    assert pending == 1
    target = f"127.0.0.1:{feedback.server.grpc_port}"
    for channel in (grpc.insecure_channel(target), service_channel(target, "fws_guess")):
        with channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            calls = {
                "RecordInteraction": lambda s=stub: s.RecordInteraction(
                    feedback_pb2.RecordInteractionRequest(interaction=interaction()), timeout=5
                ),
                "GetInteraction": lambda s=stub: s.GetInteraction(
                    feedback_pb2.GetInteractionRequest(response_id=group.response_ids[0]),
                    timeout=5,
                ),
                "ExportComparisons": lambda s=stub: list(
                    s.ExportComparisons(feedback_pb2.ExportComparisonsRequest(), timeout=5)
                ),
                "Stats": lambda s=stub: s.Stats(feedback_pb2.StatsRequest(), timeout=5),
            }
            assert_refused_without_credential(channel, calls)
    # The refused export recorded no snapshot: the comparisons are still pending.
    assert feedback.stub.Stats(feedback_pb2.StatsRequest()).comparisons_pending == pending
