"""The trainer's Celery tasks: thin (ids in, retries declared); the work is in control.py
(the control queue) and pipeline.py (``drive``, the train queue)."""

from __future__ import annotations

import functools
from typing import Any

import grpc
import redis

from services.trainer.celery_app import app, settings
from services.trainer.control import Trainer
from services.trainer.pipeline import RunDriver

# Transient outages of the feedback service or Redis: retried with backoff, then given up
# until the next beat tick.
_TRANSIENT = (grpc.RpcError, redis.ConnectionError)


@functools.cache
def trainer() -> Trainer:
    """One per control worker process (the run store's engine and Redis pool are reused)."""
    return Trainer(settings)


@functools.cache
def run_driver() -> RunDriver:
    """One per train worker process."""
    return RunDriver.for_settings(settings)


def enqueue_drive(run_id: str) -> None:
    drive.apply_async(args=[run_id], queue=settings.train_queue)


@app.task(
    name="flywheel.trainer.check",
    autoretry_for=_TRANSIENT,
    retry_backoff=True,
    max_retries=3,
)
def check(forced: bool = False) -> dict[str, Any]:
    return trainer().check(enqueue_drive, forced=forced)


@app.task(name="flywheel.trainer.drive", autoretry_for=(redis.ConnectionError,), max_retries=3)
def drive(run_id: str) -> str:
    return run_driver().drive(run_id)


@app.task(name="flywheel.trainer.reconcile", autoretry_for=_TRANSIENT, max_retries=1)
def reconcile() -> list[str]:
    return trainer().reconcile(enqueue_drive)


@app.task(name="flywheel.trainer.status")
def status(limit: int = 10) -> list[dict[str, Any]]:
    return trainer().status(limit)


@app.task(name="flywheel.trainer.cancel")
def cancel() -> dict[str, Any]:
    return trainer().cancel()


@app.task(
    name="flywheel.trainer.watch",
    autoretry_for=_TRANSIENT,
    retry_backoff=True,
    max_retries=3,
)
def watch() -> dict[str, Any]:
    return trainer().watch()


@app.task(name="flywheel.trainer.watch_report")
def watch_report() -> dict[str, Any] | None:
    return trainer().watch_report()
