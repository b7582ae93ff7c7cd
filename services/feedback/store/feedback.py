"""Accepting a feedback event: the rules, the vote it replaces, its comparisons, its outbox row.

Everything here runs inside one write transaction (see writer.py), so an event, the vote it
replaces, its comparison revision and its outbox message are stored together or not at all.
Checks come first and write nothing, in this order: no answer twice (422), the answers exist
(404), the caller may rate them (401/403), a retried ``client_event_id`` (replay, or 409 if the
request differs), the feedback window (410), then the shape of the vote (422/409).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic_core import to_json

from services.common.credentials import token_matches
from services.feedback import comparisons as derive
from services.feedback.errors import RefusalKind, Refused
from services.feedback.store import interactions as served_answers
from services.feedback.store.batch_votes import BatchVotes, VotesAhead
from services.feedback.store.interactions import Served, ServedCache
from services.feedback.store.rawsql import RawSql, insert_sql
from services.feedback.store.tables import comparisons, feedback_events
from services.feedback.store.tables import outbox as outbox_table

Kind = Literal["thumb", "ranking", "pairwise"]


@dataclass(frozen=True)
class Credential:
    """Who is asking: the id of a bearer API key, or a group's feedback token (or neither)."""

    api_key_id: str | None = None
    feedback_token: str | None = None


@dataclass(frozen=True)
class FeedbackCommand:
    """One vote as the client sent it, normalised by the API layer.

    ``payload`` by kind: thumb ``{response_id, value (+1/-1), comment}``; ranking
    ``{ranking: [[ids of the best tier], [next tier], ...]}``; pairwise
    ``{response_a, response_b, outcome ("a" | "b" | "tie" | "both_bad")}``.
    """

    kind: Kind
    payload: dict[str, Any]
    credential: Credential
    client_event_id: str | None = None

    def response_ids(self) -> list[str]:
        if self.kind == "thumb":
            return [self.payload["response_id"]]
        if self.kind == "ranking":
            return [r for tier in self.payload["ranking"] for r in tier]
        return [self.payload["response_a"], self.payload["response_b"]]

    def request_sha256(self) -> str:
        # The API layer builds payloads from pydantic models, so their key order is fixed and
        # the same request always encodes to the same bytes.
        return hashlib.sha256(to_json({"kind": self.kind, "payload": self.payload})).hexdigest()


@dataclass(frozen=True)
class Accepted:
    """The stored event as the client sees it; ``replayed`` when a retry matched an old one.

    ``model_version``: the policy version of the first answer judged (the thumbed one, the
    first of a ranking's best tier, a pairwise vote's answer A), for the per-version metrics;
    None for a replay, which is not counted again.
    """

    event: dict[str, Any]
    replayed: bool
    model_version: str | None = None


def _new_id(prefix: str) -> str:
    """A unique id that sorts by creation time (48-bit milliseconds, then 80 random bits), as
    UUIDv7 does: new rows land at the end of the primary-key B-tree instead of on random pages,
    which keeps each commit's write-ahead log (and each checkpoint) small."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def comparison_id(source: str, rater_key_id: str, subject: str) -> str:
    """The stable id of one comparison across its revisions."""
    digest = hashlib.sha256(f"{source}\0{rater_key_id}\0{subject}".encode()).hexdigest()
    return "cmp_" + digest[:24]


# ---- checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owned:
    """Something a client asks to rate or read: its id, the API key it was served to, and the
    hash of its group's feedback token."""

    subject_id: str
    api_key_id: str
    feedback_token_hash: str


def authorise(
    credential: Credential, owned: Sequence[Owned], revoked: Container[str]
) -> tuple[str, str]:
    """The one access rule, for rating and for reading: only the key the answers were served
    to, or their group's feedback token, and not once that key is revoked. Returns (the
    owner's key id, "api_key" | "feedback_token"); refuses otherwise."""
    if credential.api_key_id is not None:
        foreign = [o.subject_id for o in owned if o.api_key_id != credential.api_key_id]
        if foreign:
            raise Refused(
                RefusalKind.FORBIDDEN,
                "not_your_response",
                "this was served to another API key; only the key that received an answer "
                "(or its feedback token) may rate or read it",
                response_ids=foreign,
            )
        via = "api_key"
    elif credential.feedback_token is not None:
        bad = [
            o.subject_id
            for o in owned
            if not token_matches(credential.feedback_token, o.feedback_token_hash)
        ]
        if bad:
            raise Refused(
                RefusalKind.FORBIDDEN,
                "invalid_feedback_token",
                "the feedback token does not belong to the group of these answers",
                response_ids=bad,
            )
        via = "feedback_token"
    else:
        raise Refused(
            RefusalKind.UNAUTHENTICATED,
            "unauthenticated",
            "send the API key that received the answer (Authorization: Bearer ...) or the "
            "feedback token that came with it (X-Feedback-Token header or feedback_token field)",
        )
    owner = owned[0].api_key_id
    if owner in revoked:
        raise Refused(
            RefusalKind.UNAUTHENTICATED,
            "revoked_api_key",
            "the API key these answers were served to has been revoked; its feedback tokens "
            "are void too",
        )
    return owner, via


def _check_window(answers: list[Served], now: datetime, ttl: timedelta) -> None:
    expired = [a.response_id for a in answers if now - a.created_at > ttl]
    if expired:
        raise Refused(
            RefusalKind.EXPIRED,
            "feedback_window_closed",
            f"feedback is accepted for {ttl.total_seconds():.0f} s after an answer is served",
            response_ids=expired,
            ttl_seconds=int(ttl.total_seconds()),
        )


def _one_group(answers: list[Served]) -> str:
    groups = sorted({a.candidate_group for a in answers})
    if len(groups) != 1:
        raise Refused(
            RefusalKind.INVALID,
            "mixed_candidate_groups",
            "rankings and pairwise votes compare answers to the same prompt (one candidate group)",
            candidate_groups=groups,
        )
    return groups[0]


def _check_ranking(sql: RawSql, command: FeedbackCommand, group: str, cache: ServedCache) -> None:
    ranked = command.response_ids()
    members = served_answers.group_members(sql, [group], cache)[group]
    expected = members[0].candidate_count
    if len(members) < expected:
        raise Refused(
            RefusalKind.CONFLICT,
            "group_incomplete",
            f"only {len(members)} of the {expected} answers of this group are recorded yet; "
            "retry shortly",
            candidate_group=group,
        )
    missing = sorted({m.response_id for m in members} - set(ranked))
    if missing:
        raise Refused(
            RefusalKind.INVALID,
            "ranking_incomplete",
            "a ranking must place every candidate of the group",
            missing=missing,
            candidate_group=group,
        )


def _subject(command: FeedbackCommand, group: str) -> str:
    if command.kind == "thumb":
        return command.payload["response_id"]
    if command.kind == "ranking":
        return group
    return "|".join(sorted((command.payload["response_a"], command.payload["response_b"])))


# ---- writes ---------------------------------------------------------------------------------


def read_ahead(
    conn: sa.Connection, commands: list[FeedbackCommand], cache: ServedCache, votes: VotesAhead
) -> None:
    """What a batch's votes will read, read before them in as few round trips as possible:
    the answers they name, into the cache ``apply`` reads first (answers never change once
    stored, so reading them early is always right); the whole groups its rankings rank (a
    ranking must place every answer of its group), unless known complete; and, on PostgreSQL,
    the current votes of their groups (batch_votes.py). The queries are all sent before any
    is read, so in the writer's pipeline they share one round trip."""
    sql = RawSql(conn)
    wanted = sorted({r for command in commands for r in command.response_ids()})
    votes_sent = votes.send(sql, wanted)
    ranked = [command.response_ids()[0] for command in commands if command.kind == "ranking"]
    groups_sent = served_answers.send_groups_of(sql, ranked, cache) if ranked else None
    found = served_answers.served(sql, wanted, cache)
    served_answers.receive_groups(sql, groups_sent, cache)
    votes.receive(conn, votes_sent, {answer.candidate_group for answer in found.values()})


def _replay(
    conn: sa.Connection, sql: RawSql, command: FeedbackCommand, rater: str
) -> Accepted | None:
    if command.client_event_id is None:
        return None
    if not sql.sqlite and not conn.in_nested_transaction():
        # PostgreSQL, in the writer's first attempt at a batch (pipelined, no savepoints):
        # assume the id is new rather than wait a round trip to look. A retry's INSERT then
        # breaks the unique (rater, client_event_id) constraint, and the writer redoes the
        # batch with a savepoint per vote, where this check runs and finds the stored event.
        # Retries are rare; the look costs every vote.
        return None
    found = sql.first(
        "SELECT id, request_sha256 FROM feedback_events "
        "WHERE rater_key_id = :rater AND client_event_id = :cid",
        {"rater": rater, "cid": command.client_event_id},
    )
    if found is None:
        return None
    event_id, request_sha256 = found
    if request_sha256 != command.request_sha256():
        raise Refused(
            RefusalKind.CONFLICT,
            "client_event_id_reused",
            "this client_event_id was already used for a different feedback request",
            client_event_id=command.client_event_id,
            event_id=event_id,
        )
    return Accepted(get_event(conn, event_id)["view"], replayed=True)


def _supersede_vote(sql: RawSql, rater: str, kind: str, subject: str, new_id: str) -> str | None:
    """Mark the current vote on ``subject`` replaced by ``new_id``; return its id."""
    previous = sql.first(
        "UPDATE feedback_events SET replaced_by = :new "
        "WHERE rater_key_id = :rater AND kind = :kind AND subject = :subject "
        "AND replaced_by IS NULL RETURNING id",
        {"new": new_id, "rater": rater, "kind": kind, "subject": subject},
    )
    return previous[0] if previous else None


def _replace_vote(
    sql: RawSql,
    batch: BatchVotes,
    rater: str,
    kind: str,
    subject: str,
    new_id: str,
    group: str,
    thumb: int | None,
) -> str | None:
    """As ``_supersede_vote``, from the batch's votes: the UPDATE is sent, nothing read."""
    previous = batch.replace((rater, kind, subject), group, new_id, thumb)
    if previous is not None:
        # By primary key alone: with "AND replaced_by IS NULL" too, ingest measured 15-25%
        # slower (PostgreSQL's planner, its statistics lagging a growing table, favours the
        # partial index of current votes; see batch_votes.py). If another replica replaced
        # it meanwhile, the new vote's INSERT breaks the one-current-vote index and the batch
        # is redone with savepoints, where votes read the database itself.
        sql.execute(
            "UPDATE feedback_events SET replaced_by = :new WHERE id = :old",
            {"new": new_id, "old": previous},
        )
    return previous


def _thumbs_in_group(sql: RawSql, rater: str, group: str) -> dict[str, int]:
    rows = sql.all(
        "SELECT subject, thumb_value FROM feedback_events WHERE candidate_group = :group "
        "AND rater_key_id = :rater AND kind = 'thumb' AND replaced_by IS NULL",
        {"group": group, "rater": rater},
    )
    return dict(rows)


def _derive_pairs(
    sql: RawSql,
    command: FeedbackCommand,
    rater: str,
    group: str,
    cache: ServedCache,
    batch: BatchVotes | None,
) -> tuple[str, derive.Pairs]:
    """(lineage subject, pairs) for the comparison this event changes."""
    if command.kind == "thumb":
        if batch is None:
            thumbs = _thumbs_in_group(sql, rater, group)
        else:
            thumbs = batch.thumbs_in_group(rater, group)
        answers = served_answers.served(sql, thumbs, cache)
        order = {r: s.candidate_index for r, s in answers.items()}
        return group, derive.from_thumbs(thumbs, order)
    answers = served_answers.served(sql, command.response_ids(), cache)
    order = {r: s.candidate_index for r, s in answers.items()}
    if command.kind == "ranking":
        return group, derive.from_ranking(command.payload["ranking"], order)
    p = command.payload
    return _subject(command, group), derive.from_pairwise(
        p["response_a"], p["response_b"], p["outcome"], order
    )


_INSERT_EVENT = insert_sql(feedback_events)
_INSERT_REVISION = insert_sql(comparisons, omit=("superseded_at",))
_INSERT_OUTBOX = insert_sql(outbox_table, omit=("id",))


def _revise_comparison(
    sql: RawSql,
    *,
    source: str,
    rater: str,
    group: str,
    lineage_subject: str,
    pairs: derive.Pairs,
    event_id: str,
    now: datetime,
) -> dict[str, Any] | None:
    """Supersede the current revision of this comparison; add the new one if it has pairs."""
    cid = comparison_id(source, rater, lineage_subject)
    sql.execute(
        "UPDATE comparisons SET superseded_at = :now "
        "WHERE comparison_id = :cid AND superseded_at IS NULL",
        {"now": sql.time(now), "cid": cid},
    )
    if not pairs.pairs:
        return None
    revision = {
        "id": _new_id("rev"),
        "comparison_id": cid,
        "source": source,
        "rater_key_id": rater,
        "candidate_group": group,
        "candidates": list(pairs.candidates),
        "pairs": [list(p) for p in pairs.pairs],
        "pair_count": len(pairs.pairs),
        "event_id": event_id,
        "recorded_at": now,
    }
    sql.execute(
        _INSERT_REVISION,
        {
            **revision,
            "candidates": sql.json(revision["candidates"]),
            "pairs": sql.json(revision["pairs"]),
            "recorded_at": sql.time(now),
        },
    )
    return revision


def apply(
    conn: sa.Connection,
    command: FeedbackCommand,
    *,
    now: datetime,
    ttl: timedelta,
    cache: ServedCache,
    revoked: Container[str] = frozenset(),
    votes: VotesAhead | None = None,
) -> Accepted:
    """Check ``command`` against what was served and store it (see the module docstring).
    ``revoked``: API key ids whose votes (by key or by their groups' tokens) are refused;
    ``votes``: where the batch's read-ahead left the current votes of its groups."""
    wanted = command.response_ids()
    duplicates = sorted({r for r in wanted if wanted.count(r) > 1})
    if duplicates:
        raise Refused(
            RefusalKind.INVALID,
            "duplicate_response",
            "each answer may appear once",
            response_ids=duplicates,
        )
    sql = RawSql(conn)
    known = served_answers.served(sql, wanted, cache)
    unknown = [r for r in wanted if r not in known]
    if unknown:
        raise Refused(
            RefusalKind.NOT_FOUND,
            "unknown_response",
            "no answer was served with these ids",
            response_ids=unknown,
        )
    answers = [known[r] for r in wanted]
    owned = [Owned(a.response_id, a.api_key_id, a.feedback_token_hash) for a in answers]
    rater, via = authorise(command.credential, owned, revoked)
    replay = _replay(conn, sql, command, rater)
    if replay is not None:
        return replay
    _check_window(answers, now, ttl)
    group = _one_group(answers)
    if command.kind == "ranking":
        _check_ranking(sql, command, group, cache)

    # Every refusal is above this line: from here on the function only writes (the writer
    # relies on that to skip per-request savepoints).
    event_id = _new_id("fb")
    subject = _subject(command, group)
    thumb = command.kind == "thumb"
    batch = votes.for_vote(conn, group) if votes is not None else None
    if batch is None:
        replaces = _supersede_vote(sql, rater, command.kind, subject, event_id)
    else:
        value = command.payload["value"] if thumb else None
        replaces = _replace_vote(sql, batch, rater, command.kind, subject, event_id, group, value)
    row = {
        "id": event_id,
        "kind": command.kind,
        "rater_key_id": rater,
        "via": via,
        "client_event_id": command.client_event_id,
        "request_sha256": command.request_sha256(),
        "subject": subject,
        "candidate_group": group,
        "payload": command.payload,
        "thumb_value": command.payload["value"] if thumb else None,
        "model_version": answers[0].model_version if thumb else None,
        "replaces": replaces,
        "replaced_by": None,
        "recorded_at": now,
    }
    sql.execute(
        _INSERT_EVENT, {**row, "payload": sql.json(command.payload), "recorded_at": sql.time(now)}
    )
    lineage_subject, pairs = _derive_pairs(sql, command, rater, group, cache, batch)
    revision = _revise_comparison(
        sql,
        source=command.kind,
        rater=rater,
        group=group,
        lineage_subject=lineage_subject,
        pairs=pairs,
        event_id=event_id,
        now=now,
    )
    sql.execute(
        _INSERT_OUTBOX,
        {
            "event_id": event_id,
            "message": sql.json(stream_message(row, revision)),
            "created_at": sql.time(now),
        },
    )
    return Accepted(
        event_view(row, revision), replayed=False, model_version=answers[0].model_version
    )


# ---- views ----------------------------------------------------------------------------------


def stream_message(event: dict[str, Any], revision: dict[str, Any] | None) -> dict[str, str]:
    """The fields announced on the Redis stream (strings only, as streams store them)."""
    return {
        "event_id": event["id"],
        "kind": event["kind"],
        "rater_key_id": event["rater_key_id"],
        "candidate_group": event["candidate_group"],
        "replaces": event["replaces"] or "",
        "comparison_id": revision["comparison_id"] if revision else "",
        "pairs": str(revision["pair_count"] if revision else 0),
        "recorded_at": event["recorded_at"].isoformat(),
    }


def _revision_of(conn: sa.Connection, event_id: str) -> dict[str, Any] | None:
    row = (
        conn.execute(sa.select(comparisons).where(comparisons.c.event_id == event_id))
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def event_view(
    event: dict[str, Any] | sa.RowMapping, revision: dict[str, Any] | None
) -> dict[str, Any]:
    """An event as the HTTP API shows it."""
    return {
        "id": event["id"],
        "kind": event["kind"],
        **event["payload"],
        "client_event_id": event["client_event_id"],
        "status": "current" if event["replaced_by"] is None else "replaced",
        "replaces": event["replaces"],
        "replaced_by": event["replaced_by"],
        "rater_key_id": event["rater_key_id"],
        "via": event["via"],
        "candidate_group": event["candidate_group"],
        "recorded_at": event["recorded_at"].isoformat(),
        "comparison": (
            {"comparison_id": revision["comparison_id"], "pairs": revision["pair_count"]}
            if revision
            else None
        ),
    }


def get_event(conn: sa.Connection, event_id: str) -> dict[str, Any] | None:
    """A stored event with its comparison revision (None if unknown)."""
    row = (
        conn.execute(sa.select(feedback_events).where(feedback_events.c.id == event_id))
        .mappings()
        .first()
    )
    if row is None:
        return None
    return {"row": dict(row), "view": event_view(row, _revision_of(conn, event_id))}
