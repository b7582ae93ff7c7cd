"""The flywheel at a glance, for the chat page's status view (``GET /v1/flywheel/status``).

Each part comes from the service that owns it: the serving version from the engine's
``/info``, thumbs by version from the feedback service's ``Stats`` (gRPC), recent runs and
their gates from the trainer's ``flywheel.trainer.status`` task and the canary's (or the
rollback watch's) last look from ``flywheel.trainer.watch_report`` (Celery, by name, as
``flywheel train status`` asks). A part whose service does not answer carries ``error`` in
words instead, and the others still show. Answers are cached for a few seconds: a page left
open polls, and the trainer's control worker should not answer every tab.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import httpx
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.service_auth import aio_service_channel
from services.common.training_runs import RunSummary
from services.inference.gateway.settings import GatewaySettings

_TRAINER_STATUS_TASK = "flywheel.trainer.status"
_TRAINER_WATCH_TASK = "flywheel.trainer.watch_report"


def run_summary(data: dict[str, Any]) -> dict[str, Any]:
    """One trainer run as the page shows it: its outcome, stages and their measurements worth
    a glance (services/common/training_runs.py says which)."""
    run = RunSummary.from_json(data)
    return {
        "id": run.id,
        "status": run.status,
        "trigger": run.trigger,
        "reason": run.reason,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "stages": [
            {"name": s.name, "status": s.status, "seconds": s.seconds, **s.shown()}
            for s in run.stages
        ],
    }


def thumbs_by_version(stats: feedback_pb2.StatsResponse) -> list[dict[str, Any]]:
    rows = []
    for entry in stats.thumbs:
        votes = entry.thumbs_up + entry.thumbs_down
        rows.append(
            {
                "model_version": entry.model_version,
                "thumbs_up": entry.thumbs_up,
                "thumbs_down": entry.thumbs_down,
                "up_ratio": entry.thumbs_up / votes if votes else None,
            }
        )
    return rows


class FlywheelStatus:
    def __init__(self, settings: GatewaySettings, engine: httpx.AsyncClient) -> None:
        self._settings = settings
        self._engine = engine
        self._timeout_s = settings.status_timeout_s
        self._channel: grpc.aio.Channel | None = None
        broker = settings.trainer_broker_url or settings.redis_url
        self._celery = Celery(broker=broker, backend=broker)
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        await asyncio.to_thread(self._celery.close)

    async def current(self) -> dict[str, Any]:
        async with self._lock:  # one refresh at a time; callers meanwhile get its answer
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self._settings.status_cache_s:
                serving, feedback, trainer = await asyncio.gather(
                    self._part("the engine", self._serving),
                    self._part("the feedback service", self._feedback),
                    self._part("the trainer", self._runs),
                )
                answer = {"serving": serving, "feedback": feedback, "trainer": trainer}
                self._cached = (time.monotonic(), answer)
            return self._cached[1]

    async def _part(self, service: str, read) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(read(), self._timeout_s)
        except TimeoutError:
            return {"error": f"{service} did not answer within {self._timeout_s:g} s"}
        except Exception as error:  # any failure of one service is that part's message
            return {"error": f"{service}: {_words(error)}"}

    async def _serving(self) -> dict[str, Any]:
        info = (await self._engine.get("/info")).raise_for_status().json()
        return {
            "model_version": info.get("model_version"),
            "canary_version": info.get("canary_version"),
            "canary_share": info.get("canary_share", 0.0),
            "device": info.get("model_device_type"),
            "dtype": info.get("model_dtype"),
        }

    async def _feedback(self) -> dict[str, Any]:
        if self._channel is None:  # made on first use: it belongs to the running event loop
            self._channel = aio_service_channel(
                self._settings.feedback_grpc_target, self._settings.resolved_service_token()
            )
        stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)
        stats = await stub.Stats(feedback_pb2.StatsRequest(), timeout=self._timeout_s)
        return {
            "thumbs": thumbs_by_version(stats),
            "feedback_events": stats.feedback_events.ranking
            + stats.feedback_events.thumbs
            + stats.feedback_events.pairwise,
            "interactions": stats.interactions,
        }

    async def _runs(self) -> dict[str, Any]:
        runs, watch = await asyncio.gather(
            asyncio.to_thread(
                self._ask, _TRAINER_STATUS_TASK, {"limit": self._settings.status_runs}
            ),
            asyncio.to_thread(self._ask, _TRAINER_WATCH_TASK, {}),
        )
        return {"runs": [run_summary(run) for run in runs], "watch": watch}

    def _ask(self, task: str, kwargs: dict[str, Any]) -> Any:
        reply = self._celery.send_task(
            task,
            kwargs=kwargs,
            queue=self._settings.trainer_control_queue,
            # Unanswered questions must not pile up for a trainer that is down: one that
            # starts later drops them instead of answering pages long gone.
            expires=self._timeout_s,
        )
        try:
            return reply.get(timeout=self._timeout_s)
        except CeleryTimeout:
            raise TimeoutError from None
        finally:
            reply.forget()


def _words(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code} from {error.request.url}"
    return str(error) or type(error).__name__
