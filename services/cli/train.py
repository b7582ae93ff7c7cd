"""``flywheel train now|status|cancel``: talk to the trainer through its Celery control queue.

The CLI sends tasks by name (it imports none of the trainer's code) and waits for the reply,
so it needs the trainer's control worker running (``flywheel up`` starts it).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from celery import Celery

from services.common.training_runs import RunSummary
from services.trainer.settings import TrainerSettings

_REPLY_TIMEOUT_S = 30.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="the trainer: start a run, see runs, cancel")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("now", help="start a run now on the comparisons not trained on yet")
    status = sub.add_parser("status", help="recent runs: stages, durations, metrics, reasons")
    status.add_argument("--limit", type=int, default=5, help="how many runs (default 5)")
    status.add_argument(
        "--json",
        action="store_true",
        help='one JSON document: {"watch": its last look, "runs": the raw records}',
    )
    sub.add_parser("cancel", help="stop the run in progress at its next check")


class TrainerUnreachable(Exception):
    pass


def ask(task: str, **kwargs: Any) -> Any:
    """Send ``task`` to the control queue and wait for its result."""
    settings = TrainerSettings()
    url = settings.resolved_broker_url
    app = Celery(broker=url, backend=url)
    try:
        reply = app.send_task(task, kwargs=kwargs, queue=settings.control_queue)
        return reply.get(timeout=_REPLY_TIMEOUT_S)
    except Exception as exc:  # the broker is down, or no control worker answered in time
        raise TrainerUnreachable(
            f"the trainer did not answer {task} within {_REPLY_TIMEOUT_S:.0f} s ({exc}); "
            "is its control worker running (`flywheel up`, `flywheel status`)?"
        ) from None
    finally:
        app.close()


def run(args: argparse.Namespace) -> int:
    match args.action:
        case "now":
            reply = ask("flywheel.trainer.check", forced=True)
            if reply["started"]:
                print(f"started {reply['run_id']}: {reply['reason']}")
            elif reply["run_id"]:
                print(f"{reply['run_id']} is already running")
            else:
                print(f"no run started: {reply['reason']}")
                return 1
        case "status":
            runs = ask("flywheel.trainer.status", limit=args.limit)
            watch = ask("flywheel.trainer.watch_report")
            if args.json:
                print(json.dumps({"watch": watch, "runs": runs}, indent=2))
            else:
                print(render_watch(watch))
                print(render(runs))
        case "cancel":
            reply = ask("flywheel.trainer.cancel")
            print(
                f"{reply['cancelled']}: {reply['reason']}"
                if reply["cancelled"]
                else reply["reason"]
            )
    return 0


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def render_watch(report: dict[str, Any] | None) -> str:
    """The watch's last look: the canary (or the newly promoted policy) against the version
    it is compared with, their always-valid intervals, and the decision."""
    if report is None:
        return "watch: no look yet"
    if report["kind"] == "idle":
        return f"watch: {report['reason']}"
    low, high = report["version_interval"]
    other_low, other_high = report["against_interval"]
    votes, other_votes = report["votes"]
    if report["kind"] == "canary":
        head = (
            f"canary {report['version']} on {report['share']:.0%} of the keys for "
            f"{report['waited_s']:.0f} of {report['max_wait_s']:.0f} s, "
            f"vs promoted {report['against']}"
        )
    else:
        head = f"promoted {report['version']} vs its parent {report['against']}"
    return (
        f"{head}: thumbs-up [{low:.2f}, {high:.2f}] ({votes} votes) vs "
        f"[{other_low:.2f}, {other_high:.2f}] ({other_votes}); decision: {report['decision']}"
        f"\n  {report['reason']}"
    )


def render(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs yet"
    lines = []
    for run in map(RunSummary.from_json, runs):
        lines.append(f"{run.id}  {run.status}  (trigger: {run.trigger})")
        if run.reason:
            lines.append(f"  reason: {run.reason}")
        for stage in run.stages:
            took = f"{stage.seconds:.1f}s" if stage.seconds is not None else "-"
            shown = " ".join(f"{k}={_value(v)}" for k, v in stage.shown().items())
            retried = f" x{stage.attempts}" if stage.attempts > 1 else ""
            lines.append(f"  {stage.name:<12} {stage.status:<9}{retried} {took:>8}  {shown}")
            if stage.reason:
                lines.append(f"  {'':<12} {stage.reason}")
    return "\n".join(lines)
