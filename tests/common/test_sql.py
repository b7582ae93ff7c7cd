"""Schema migrations shared by the feedback store and the trainer's run store."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from services.common.sql import Migrations
from tests.conftest import REPO

# The two databases Flywheel keeps: the feedback store and the trainer's run store.
STORES = {
    "feedback": REPO / "services/feedback/store/migrations",
    "trainer": REPO / "services/trainer/store/migrations",
}


def migrate_at_once(migrations, url: str, processes: int) -> list[BaseException]:
    """Start ``processes`` migrations of one empty database together, as the replicas of a
    Deployment (or the trainer's three processes) do when they start side by side."""
    start = threading.Barrier(processes)
    errors: list[BaseException] = []

    def migrate() -> None:
        start.wait()
        try:
            migrations.migrate(url)
        except BaseException as error:  # noqa: BLE001 - collected and asserted on
            errors.append(error)

    threads = [threading.Thread(target=migrate) for _ in range(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a migration is stuck (deadlock)"
    return errors


@pytest.mark.parametrize("store", sorted(STORES))
def test_processes_starting_together_migrate_one_database_once(store, database_url):
    migrations = Migrations(STORES[store])

    errors = migrate_at_once(migrations, database_url, processes=4)

    assert errors == []
    engine = sa.create_engine(database_url)
    try:
        assert migrations.schema_is_current(engine)
        with engine.connect() as connection:
            versions = connection.execute(sa.text("SELECT * FROM alembic_version")).all()
        assert len(versions) == 1
    finally:
        engine.dispose()
