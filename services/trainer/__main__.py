"""``python -m services.trainer worker control|train``, ``beat`` or ``migrate``.

``flywheel up`` starts both workers and beat; in a cluster each is a Deployment (beat with
exactly one replica).
"""

from __future__ import annotations

import argparse

from services.common.logging_setup import configure_logging
from services.common.metrics import set_build_info, start_metrics_server
from services.trainer.settings import TrainerSettings
from services.trainer.store.runs import MIGRATIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="serve one queue")
    worker.add_argument("role", choices=["control", "train"], help="which queue it serves")
    sub.add_parser("beat", help="send the periodic tasks (exactly one per deployment)")
    sub.add_parser("migrate", help="bring the run store's schema up to date and exit")
    args = parser.parse_args(argv)

    settings = TrainerSettings()
    configure_logging(
        f"trainer-{getattr(args, 'queue', args.command)}", settings.log_level, settings.log_format
    )
    MIGRATIONS.migrate(settings.resolved_database_url)
    if args.command == "migrate":
        return 0
    set_build_info("trainer")
    from services.trainer.celery_app import app

    if args.command == "beat":
        start_metrics_server(settings.beat_metrics_port, settings.metrics_host)
        schedule = settings.resolved_runs_dir / "beat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        app.start(["beat", f"--schedule={schedule}", "--loglevel=INFO"])
        return 0
    control = args.role == "control"
    port = settings.control_metrics_port if control else settings.train_metrics_port
    start_metrics_server(port, settings.metrics_host)
    app.worker_main(
        [
            "worker",
            f"--queues={settings.control_queue if control else settings.train_queue}",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--hostname={args.role}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
