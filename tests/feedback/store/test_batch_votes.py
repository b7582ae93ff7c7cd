"""Votes of one write batch read the batch's copy of the current votes (PostgreSQL), and stay
right when many land in one batch or when another replica wrote a vote meanwhile."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.common.credentials import api_key_id
from services.feedback.store import feedback as store
from services.feedback.store.feedback import Credential, FeedbackCommand
from services.feedback.store.interactions import ServedCache
from tests.feedback.feedback_helpers import serve_group


def post(feedback, body, headers):
    return feedback.http.post("/v1/feedback", json=body, headers=headers)


def current_votes(feedback, subject: str) -> list[tuple]:
    with sa.create_engine(feedback.settings.resolved_database_url).connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT id, thumb_value, replaces FROM feedback_events "
                "WHERE subject = :s AND replaced_by IS NULL"
            ),
            {"s": subject},
        ).all()


def current_pairs(feedback, group: str) -> list[list[int]]:
    with sa.create_engine(feedback.settings.resolved_database_url).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT candidates, pairs FROM comparisons "
                "WHERE candidate_group = :g AND superseded_at IS NULL"
            ),
            {"g": group},
        ).all()
    decoded = [[json.loads(v) if isinstance(v, str) else v for v in row] for row in rows]
    return [[[c[b], c[w]] for b, w in p] for c, p in decoded]


def test_many_votes_on_one_group_in_one_batch_keep_one_current_vote_each(feedback):
    group = serve_group(feedback.stub, n=3)
    first, second = group.response_ids[:2]
    bodies = [
        {"kind": "thumb", "response_id": response_id, "value": value}
        for value in (1, -1, 1, -1)
        for response_id in (first, second)
    ]
    # Sent together, they share write batches: later votes read what earlier ones wrote.
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: post(feedback, body, group.auth), bodies))
    assert [a.status_code for a in answers] == [201] * len(bodies)

    final = {}
    for response_id in (first, second):
        [(event_id, value, replaces)] = current_votes(feedback, response_id)
        assert replaces is not None  # it replaced the vote before it, which is not current
        final[response_id] = value
    # The group's one current comparison is what its current thumbs say.
    expected = []
    if final[first] != final[second]:
        better, worse = (first, second) if final[first] > final[second] else (second, first)
        expected = [[[better, worse]]]
    assert current_pairs(feedback, group.candidate_group) == expected


def test_a_vote_another_replica_stored_meanwhile_is_replaced_not_doubled(feedback, monkeypatch):
    if feedback.settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("SQLite is one writer process: no other replica writes to its file")
    group = serve_group(feedback.stub, n=2)
    target = group.response_ids[0]
    core = feedback.core
    other_replica = sa.create_engine(feedback.settings.resolved_database_url)
    read_ahead = core.writer._read_ahead
    theirs = {}

    def read_then_race(conn, commands):
        read_ahead(conn, commands)
        if theirs:
            return
        # Another replica stores the same key's vote on the same answer and commits, after
        # this batch read the current votes and before it writes its own.
        command = FeedbackCommand(
            "thumb",
            {"response_id": target, "value": -1},
            Credential(api_key_id=api_key_id(group.api_key)),
        )
        with other_replica.begin() as other:
            accepted = store.apply(
                other, command, now=datetime.now(UTC), ttl=timedelta(days=1), cache=ServedCache()
            )
        theirs["id"] = accepted.event["id"]

    monkeypatch.setattr(core.writer, "_read_ahead", read_then_race)
    ours = post(feedback, {"kind": "thumb", "response_id": target, "value": 1}, group.auth)

    assert ours.status_code == 201, ours.text
    assert ours.json()["replaces"] == theirs["id"]
    [(event_id, value, replaces)] = current_votes(feedback, target)
    assert (event_id, value, replaces) == (ours.json()["id"], 1, theirs["id"])
