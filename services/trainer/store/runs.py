"""The run store: runs, their stages and the rollback log, fenced by the lease's token.

Every write a worker makes for a run carries the fencing token of its lease and only applies
while the run still carries that token: a worker that lost its lease (paused, partitioned)
and wakes up cannot overwrite what the run's new owner recorded (:class:`LostFence`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from services.common.sql import Migrations, make_engine
from services.trainer.store.tables import rollbacks, runs, stages

MIGRATIONS = Migrations(Path(__file__).with_name("migrations"))

ACTIVE = ("pending", "running")


class LostFence(Exception):
    """The run has a newer owner (its fence moved on): this worker must stop writing."""


@dataclass(frozen=True)
class StageRecord:
    name: str
    status: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    outputs: dict[str, Any]
    reason: str

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Run:
    id: str
    created_at: datetime
    trigger: str
    status: str
    reason: str
    fence: int
    heartbeat_at: datetime | None
    cancel_requested: bool
    finished_at: datetime | None
    snapshot_until: datetime | None
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def outputs(self) -> dict[str, dict[str, Any]]:
        """Each finished stage's outputs, by stage name (what later stages read)."""
        return {name: s.outputs for name, s in self.stages.items() if s.status == "done"}


def _now() -> datetime:
    return datetime.now(UTC)


class RunStore:
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        if migrate:
            MIGRATIONS.migrate(url)
        self.engine = make_engine(url, writer=True, pool_size=2)

    def close(self) -> None:
        self.engine.dispose()

    # ---- runs ---------------------------------------------------------------------------

    def create_run(self, trigger: str) -> tuple[Run, bool]:
        """A new pending run, or the active one if there is one: (run, created)."""
        run_id = f"run_{_now():%Y%m%d%H%M%S}_{uuid.uuid4().hex[:8]}"
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    runs.insert().values(
                        id=run_id, created_at=_now(), trigger=trigger, status="pending", active=1
                    )
                )
        except sa.exc.IntegrityError:  # another trigger won: one active run at a time
            active = self.active_run()
            if active is None:  # it finished in between; a caller may simply check again
                raise
            return active, False
        return self.get(run_id), True

    def get(self, run_id: str) -> Run:
        with self.engine.connect() as conn:
            row = conn.execute(runs.select().where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise KeyError(f"no run {run_id}")
            stage_rows = conn.execute(
                stages.select().where(stages.c.run_id == run_id).order_by(stages.c.started_at)
            ).mappings()
            records = {
                s["name"]: StageRecord(**{k: s[k] for k in _STAGE_FIELDS}) for s in stage_rows
            }
        return Run(**{k: row[k] for k in _RUN_FIELDS}, stages=records)

    def active_run(self) -> Run | None:
        with self.engine.connect() as conn:
            run_id = conn.execute(sa.select(runs.c.id).where(runs.c.active == 1)).scalar()
        return None if run_id is None else self.get(run_id)

    def recent(self, limit: int = 10) -> list[Run]:
        with self.engine.connect() as conn:
            ids = conn.execute(
                sa.select(runs.c.id).order_by(runs.c.created_at.desc()).limit(limit)
            ).scalars()
            ids = list(ids)
        return [self.get(run_id) for run_id in ids]

    def last_finished(self, statuses: tuple[str, ...] | None = None) -> Run | None:
        """The newest finished run (of ``statuses``) that took a snapshot."""
        query = sa.select(runs.c.id).where(
            runs.c.active.is_(None), runs.c.snapshot_until.is_not(None)
        )
        if statuses is not None:
            query = query.where(runs.c.status.in_(statuses))
        with self.engine.connect() as conn:
            run_id = conn.execute(query.order_by(runs.c.snapshot_until.desc()).limit(1)).scalar()
        return None if run_id is None else self.get(run_id)

    def claim(self, run_id: str, fence: int) -> Run | None:
        """Make ``fence`` the run's owner (a new lease holder); None if the run is over, or
        if a newer fence already owns it (a worker that paused between taking its lease and
        claiming must not take the run back from the one that came after)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.active == 1, runs.c.fence < fence)
                .values(status="running", fence=fence, heartbeat_at=_now())
            ).rowcount
        return self.get(run_id) if done else None

    def heartbeat(self, run_id: str, fence: int) -> None:
        self._fenced(run_id, fence, heartbeat_at=_now())

    def finish_run(
        self, run_id: str, fence: int, status: str, reason: str = "", **values: Any
    ) -> None:
        self._fenced(
            run_id, fence, status=status, reason=reason, active=None, finished_at=_now(), **values
        )

    def set_snapshot_until(self, run_id: str, fence: int, until: datetime) -> None:
        self._fenced(run_id, fence, snapshot_until=until)

    def request_cancel(self) -> Run | None:
        """Ask the active run to stop (it does at the next check); the run, or None."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.active == 1).values(cancel_requested=True))
        return self.active_run()

    def stale(self, older_than_s: float) -> list[Run]:
        """Active runs whose owner stopped beating (or that no worker ever claimed)."""
        cutoff = _now() - timedelta(seconds=older_than_s)
        with self.engine.connect() as conn:
            ids = conn.execute(
                sa.select(runs.c.id).where(
                    runs.c.active == 1,
                    sa.func.coalesce(runs.c.heartbeat_at, runs.c.created_at) < cutoff,
                )
            ).scalars()
            ids = list(ids)
        return [self.get(run_id) for run_id in ids]

    def note(self, run_id: str, reason: str) -> None:
        """Record why something happened to a run from outside its owner (the reconciler)."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(reason=reason))

    # ---- stages -------------------------------------------------------------------------

    def start_stage(self, run_id: str, fence: int, name: str) -> int:
        """Mark a stage running (again); returns its attempt number."""
        with self.engine.begin() as conn:
            self._check_fence(conn, run_id, fence)
            row = conn.execute(
                sa.select(stages.c.attempts).where(stages.c.run_id == run_id, stages.c.name == name)
            ).first()
            attempt = (row.attempts if row else 0) + 1
            values = dict(status="running", attempts=attempt, started_at=_now(), finished_at=None)
            if row is None:
                conn.execute(stages.insert().values(run_id=run_id, name=name, outputs={}, **values))
            else:
                conn.execute(
                    stages.update()
                    .where(stages.c.run_id == run_id, stages.c.name == name)
                    .values(**values)
                )
        return attempt

    def finish_stage(
        self,
        run_id: str,
        fence: int,
        name: str,
        status: str,
        outputs: dict[str, Any] | None = None,
        reason: str = "",
    ) -> None:
        with self.engine.begin() as conn:
            self._check_fence(conn, run_id, fence)
            conn.execute(
                stages.update()
                .where(stages.c.run_id == run_id, stages.c.name == name)
                .values(status=status, outputs=outputs or {}, reason=reason, finished_at=_now())
            )

    # ---- rollbacks ----------------------------------------------------------------------

    def record_rollback(self, version: str, to_version: str, reason: str) -> bool:
        """Log a rollback of ``version``; False if it was rolled back before."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    rollbacks.insert().values(
                        version=version, to_version=to_version, at=_now(), reason=reason
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def rolled_back(self, version: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(rollbacks.c.version).where(rollbacks.c.version == version)
            ).first()
        return found is not None

    # ---- fencing ------------------------------------------------------------------------

    def _fenced(self, run_id: str, fence: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(
                runs.update().where(runs.c.id == run_id, runs.c.fence == fence).values(**values)
            ).rowcount
        if not done:
            raise LostFence(f"{run_id} is no longer owned by fence {fence}")

    @staticmethod
    def _check_fence(conn: sa.Connection, run_id: str, fence: int) -> None:
        current = conn.execute(
            sa.select(runs.c.fence).where(runs.c.id == run_id).with_for_update()
        ).scalar()
        if current != fence:
            raise LostFence(f"{run_id} is owned by fence {current}, not {fence}")


_RUN_FIELDS = (
    "id",
    "created_at",
    "trigger",
    "status",
    "reason",
    "fence",
    "heartbeat_at",
    "cancel_requested",
    "finished_at",
    "snapshot_until",
)
_STAGE_FIELDS = ("name", "status", "attempts", "started_at", "finished_at", "outputs", "reason")
