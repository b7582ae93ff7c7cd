"""Personas as clients of the real public APIs: the gateway (in front of the engine, reward
and feedback services) and the feedback service's HTTP API."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.generated.flywheel.v1 import feedback_pb2
from services.simulator.client import Labeler
from services.simulator.personas import default_panel
from tests.harness import wait_for

PROMPT = "What steps should I take to start running regularly?"


def persona(kind: str, retry_rate: float = 0.0):
    ada = next(p for p in default_panel() if p.name == "ada")
    return dataclasses.replace(ada, behaviour={kind: 1.0}, retry_rate=retry_rate)


@pytest.fixture
def labeler_for(stack, feedback):
    made = []

    def make(kind: str, retry_rate: float = 0.0) -> Labeler:
        labeler = Labeler(
            persona(kind, retry_rate), stack.url, feedback.http_url, stack.key, max_tokens=8
        )
        made.append(labeler)
        return labeler

    yield make
    for labeler in made:
        labeler.close()


def exported_groups(feedback) -> list[feedback_pb2.ComparisonGroup]:
    pages = feedback.stub.ExportComparisons(feedback_pb2.ExportComparisonsRequest(), timeout=30)
    return [group for page in pages for group in page.groups]


def test_a_ranking_of_four_candidates_becomes_one_k_wise_comparison(labeler_for, feedback):
    labeler = labeler_for("ranking")
    served = labeler.ask(PROMPT, n=4)
    assert len(served.answers) == len(set(served.response_ids)) == 4
    assert served.model_version == "v0" and served.feedback_token
    wait_for(lambda: feedback.interaction_count() == 4, 30, "the gateway's records")

    assert labeler.give_feedback(served) == "ranking"

    (group,) = exported_groups(feedback)
    assert len(group.candidates) == 4 and len(group.pairs) == 6  # C(4, 2), no ties
    assert {c.response_id for c in group.candidates} == set(served.response_ids)


@pytest.mark.parametrize(("kind", "events"), [("thumb", "thumbs"), ("pairwise", "pairwise")])
def test_thumbs_and_pairwise_votes_are_recorded(labeler_for, feedback, kind, events):
    labeler = labeler_for(kind)
    served = labeler.ask(PROMPT, n=4)
    wait_for(lambda: feedback.interaction_count() == 4, 30, "the gateway's records")
    assert labeler.give_feedback(served) == kind
    stats = feedback.stub.Stats(feedback_pb2.StatsRequest(), timeout=10)
    assert getattr(stats.feedback_events, events) == 1


def test_a_retried_vote_counts_once(labeler_for, feedback):
    labeler = labeler_for("ranking", retry_rate=1.0)
    served = labeler.ask(PROMPT, n=3)
    wait_for(lambda: feedback.interaction_count() == 3, 30, "the gateway's records")
    labeler.give_feedback(served)
    assert labeler.counts.retries == 1 and labeler.counts.refused == 0
    stats = feedback.stub.Stats(feedback_pb2.StatsRequest(), timeout=10)
    assert stats.feedback_events.ranking == 1
