"""The trainer's Celery application: Redis as broker and result backend, two queues, a beat
schedule.

Queues: ``control`` (checks, status, cancel, the reconciler, the watch: quick, no
torch) and ``train`` (driving a run; its heavy stages run in subprocesses or Jobs). Each
queue has its own worker, started with the solo pool, concurrency 1 and prefetch 1: no
worker process is ever forked (a fork of a process that touched CUDA cannot use it), the
train worker takes one run at a time, and a long stage never delays a status call. Memory is
returned because every heavy stage is a process of its own that exits (``max_tasks_per_child``
does not apply to the solo pool; it is not needed).

Acknowledgement: early (Celery's default, ``task_acks_late=False``). A run's progress lives
in the run store, not in the message: if a worker dies, the reconciler (on beat) finds the
run's heartbeat stale and enqueues it again, and the new owner resumes at the first stage not
done, from its checkpoints. So nothing depends on redelivery, and a redelivered or duplicated
message finds the lease taken or the stages done and does nothing twice.
"""

from __future__ import annotations

from celery import Celery

from services.trainer.settings import TrainerSettings


def make_app(settings: TrainerSettings) -> Celery:
    app = Celery("flywheel.trainer", include=["services.trainer.tasks"])
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        result_backend=settings.resolved_broker_url,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.control_queue,
        task_routes={"flywheel.trainer.drive": {"queue": settings.train_queue}},
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        task_track_started=True,
        # The service configures logging itself (JSON lines like every other service).
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule={
            "check-for-new-comparisons": {
                "task": "flywheel.trainer.check",
                "schedule": settings.check_interval_s,
                # A check that waited longer than one interval is stale: the next one comes.
                "options": {"expires": settings.check_interval_s},
            },
            "reconcile-stale-runs": {
                "task": "flywheel.trainer.reconcile",
                "schedule": max(settings.lease_ttl_s / 2, 1.0),
                "options": {"expires": settings.lease_ttl_s},
            },
            "watch-canary-and-rollbacks": {
                "task": "flywheel.trainer.watch",
                "schedule": settings.watch_interval_s,
                "options": {"expires": settings.watch_interval_s},
            },
        },
    )
    return app


settings = TrainerSettings()
app = make_app(settings)
