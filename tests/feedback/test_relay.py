"""The outbox relay against a real Redis: delivery, exactly once across a crash, Redis down."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
import sqlalchemy as sa

from services.common.redis_names import FEEDBACK_EVENTS_STREAM
from services.feedback.relay import OutboxRelay
from services.feedback.store import database, outbox
from services.feedback.store.tables import outbox as outbox_table
from tests.harness import free_port


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    database.migrate(url)
    engine = database.make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            outbox_table.insert(),
            [
                {
                    "event_id": f"fb_{i}",
                    "message": {"event_id": f"fb_{i}", "n": str(i)},
                    "created_at": datetime.now(UTC),
                }
                for i in range(7)
            ],
        )
    yield engine
    engine.dispose()


def remove_rows(engine):
    def remove(ids):
        with engine.begin() as conn:
            outbox.remove(conn, ids)

    return remove


def stream_ids(client) -> list[str]:
    return [fields[b"event_id"].decode() for _, fields in client.xrange(FEEDBACK_EVENTS_STREAM)]


def backlog(engine) -> int:
    with engine.connect() as conn:
        return outbox.backlog(conn)


def test_delivers_in_order_in_batches(store, feedback_redis_url):
    client = redis.Redis.from_url(feedback_redis_url)
    relay = OutboxRelay(store, remove_rows(store), client, batch_size=3)
    assert [relay.deliver_once() for _ in range(4)] == [3, 3, 1, 0]
    assert stream_ids(client) == [f"fb_{i}" for i in range(7)]
    assert backlog(store) == 0


def test_a_crash_after_xadd_does_not_add_twice(store, feedback_redis_url):
    client = redis.Redis.from_url(feedback_redis_url)

    def die(_ids):
        raise SystemExit("killed between XADD and deleting the rows")

    with pytest.raises(SystemExit):
        OutboxRelay(store, die, client).deliver_once()
    assert backlog(store) == 7 and len(stream_ids(client)) == 7
    assert OutboxRelay(store, remove_rows(store), client).deliver_once() == 7
    assert stream_ids(client) == [f"fb_{i}" for i in range(7)]
    assert backlog(store) == 0


def test_rows_wait_while_redis_is_down(store):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        OutboxRelay(store, remove_rows(store), dead).deliver_once()
    assert backlog(store) == 7
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar() == 7
