"""The current votes in the candidate groups a write batch touches, read once for the batch.

Accepting a vote reads two things back from the database: the rater's current vote on the same
subject (which the new one replaces) and, for a thumb, the rater's other current thumbs in the
group (its comparison is derived from them). On PostgreSQL each read is a network round trip
that stops the writer's pipeline (writer.py), so two per vote. Instead the batch's read-ahead
loads every current vote of its groups in one query, and each vote of the batch reads and
updates this copy as it writes, in the batch's order.

Only for PostgreSQL's first, pipelined attempt at a batch, and only in that transaction. If
another replica wrote a vote on the same subject meanwhile, the database's rule of one current
vote per (rater, kind, subject) (a unique index) fails this batch's INSERT, and the writer
redoes the batch with savepoints, where every vote reads the database itself again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from services.feedback.store.interactions import in_groups_of_answers
from services.feedback.store.rawsql import RawSql, Sent, in_params

VoteKey = tuple[str, str, str]  # (rater key id, kind, subject)


@dataclass
class BatchVotes:
    transaction: sa.engine.Transaction
    groups: frozenset[str]
    current: dict[VoteKey, str] = field(default_factory=dict)  # -> event id
    thumbs: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # (rater, group) -> {response id: +1 / -1}, the rater's current thumbs in the group

    def replace(self, key: VoteKey, group: str, event_id: str, thumb: int | None) -> str | None:
        """Make ``event_id`` the current vote on ``key``; the id of the vote it replaces."""
        previous = self.current.get(key)
        self.current[key] = event_id
        if thumb is not None:
            rater, _kind, response_id = key
            self.thumbs.setdefault((rater, group), {})[response_id] = thumb
        return previous

    def thumbs_in_group(self, rater: str, group: str) -> dict[str, int]:
        return dict(self.thumbs.get((rater, group), {}))


@dataclass
class VotesAhead:
    """Where the writer's read-ahead leaves the batch's votes for ``apply`` to find."""

    batch: BatchVotes | None = None

    def send(self, sql: RawSql, response_ids: list[str]) -> Sent | None:
        """Ask (not yet read) for every vote in the groups of ``response_ids``; None where
        there is nothing to ask: on SQLite, whose reads cost no round trip, it keeps reading
        as it goes."""
        self.batch = None
        if sql.sqlite or not response_ids:
            return None
        # Every vote of the groups, the replaced ones filtered here: with "replaced_by IS NULL"
        # in the query PostgreSQL's planner scans the whole partial index of current votes
        # (tables.py) instead of looking the few groups up, slower as the table grows. The
        # groups come from the answers in the query itself, so this query need not wait for
        # the answers' own read: both go out together.
        return sql.send(
            "SELECT id, rater_key_id, kind, subject, candidate_group, thumb_value, replaced_by "
            f"FROM feedback_events WHERE {in_groups_of_answers(sql, len(response_ids))}",
            in_params("r", response_ids),
        )

    def receive(self, conn: sa.Connection, sent: Sent | None, groups: set[str]) -> None:
        """Read what ``send`` asked for; ``groups``: those of the answers that exist."""
        if sent is None:
            return
        rows = sent.rows()
        batch = BatchVotes(conn.get_transaction(), frozenset(groups))
        for event_id, rater, kind, subject, group, thumb, replaced_by in rows:
            if replaced_by is None:
                batch.replace((rater, kind, subject), group, event_id, thumb)
        self.batch = batch

    def for_vote(self, conn: sa.Connection, group: str) -> BatchVotes | None:
        """The batch's votes if they may stand in for the database for a vote in ``group``:
        read in this very transaction, covering the group, outside a savepoint redo."""
        batch = self.batch
        if (
            batch is None
            or batch.transaction is not conn.get_transaction()
            or conn.in_nested_transaction()
            or group not in batch.groups
        ):
            return None
        return batch
