"""Looking served answers up: a complete candidate group is read once, a group still being
recorded is read again until its last answer arrives."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from services.feedback.store import database
from services.feedback.store.interactions import (
    NewInteraction,
    ServedCache,
    group_members,
    record,
)
from services.feedback.store.rawsql import RawSql

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def answer(group: str, index: int, count: int) -> NewInteraction:
    return NewInteraction(
        response_id=f"resp_{group}_{index}",
        conversation_id="conv_1",
        messages=[{"role": "user", "content": "Name a colour."}],
        answer=f"answer {index}",
        candidate_group=group,
        candidate_index=index,
        candidate_count=count,
        model_version="v0",
        sampling={"temperature": 1.0},
        api_key_id="key_1",
        feedback_token="token",
    )


def test_a_group_is_kept_once_complete_and_read_again_while_it_grows(tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    database.migrate(url)
    engine = database.make_engine(url)
    cache = ServedCache()
    with engine.begin() as conn:
        sql = RawSql(conn)
        for index in (0, 1):
            record(conn, answer("grp_a", index, 3), NOW)
        record(conn, answer("grp_b", 0, 1), NOW)
        found = group_members(sql, ["grp_a", "grp_b", "grp_none"], cache)
        assert [m.candidate_index for m in found["grp_a"]] == [0, 1]
        assert [m.response_id for m in found["grp_b"]] == ["resp_grp_b_0"]
        assert "grp_none" not in found
        # The missing answer arrives: the incomplete group was not kept, so it is seen.
        record(conn, answer("grp_a", 2, 3), NOW)
        assert [m.candidate_index for m in group_members(sql, ["grp_a"], cache)["grp_a"]] == [
            0,
            1,
            2,
        ]
        # Complete groups now come from the cache: the table is not read for them again.
        conn.execute(sa.text("DELETE FROM interactions"))
        found = group_members(sql, ["grp_a", "grp_b"], cache)
        assert len(found["grp_a"]) == 3 and len(found["grp_b"]) == 1
        # Without the writer's cache (another thread's read) the table is the answer.
        assert group_members(sql, ["grp_a"]) == {}
    engine.dispose()
