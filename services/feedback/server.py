"""The feedback service process: HTTP (uvicorn) and gRPC front ends over one FeedbackCore.

Shutdown order on SIGTERM: stop taking HTTP and gRPC requests (letting in-flight ones finish
within ``drain_timeout_s``), then let the writer commit what it holds and the relay deliver
what it can, then exit. Everything acknowledged is already committed, so even SIGKILL loses
nothing that got a 2xx; the outbox delivers the rest after the restart.
"""

from __future__ import annotations

import gc
import logging

import redis

from services.common.generated.flywheel.v1 import feedback_pb2_grpc
from services.common.grpc_server import GrpcServer
from services.common.http_server import HttpServerThread, run_until_signal
from services.common.metrics import set_build_info
from services.feedback.api.app import create_app
from services.feedback.core import FeedbackCore, engine_url_for_logs
from services.feedback.grpc_service import FeedbackServicer
from services.feedback.metrics import register_store_collector
from services.feedback.settings import FeedbackSettings

log = logging.getLogger(__name__)


class FeedbackServer:
    def __init__(self, settings: FeedbackSettings, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.core = FeedbackCore(settings, redis_client)
        self._grpc = GrpcServer(
            settings.grpc_host,
            settings.grpc_port,
            service_token=settings.resolved_service_token(),
            max_workers=16,
        )
        self._grpc.add(
            feedback_pb2_grpc.add_FeedbackServiceServicer_to_server,
            FeedbackServicer(self.core),
            "flywheel.v1.FeedbackService",
        )
        self._http = HttpServerThread(
            create_app(self.core), settings.http_host, settings.http_port, settings.drain_timeout_s
        )

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def grpc_port(self) -> int:
        return self._grpc.port

    def start(self, timeout: float = 30.0) -> None:
        self.core.start()
        self._grpc.start()
        self._http.start(timeout)
        self._grpc.set_serving(True)
        log.info(
            "feedback service ready",
            extra={
                "http_port": self.http_port,
                "grpc_port": self.grpc_port,
                "database": engine_url_for_logs(self.settings.resolved_database_url),
            },
        )

    def stop(self) -> None:
        self._grpc.set_serving(False)
        self._http.stop()
        self._grpc.stop(self.settings.drain_timeout_s)
        self.core.stop()
        log.info("feedback service stopped")

    def serve_until_signal(self) -> None:
        run_until_signal(self.start, self.stop, healthy=lambda: self._http.alive)


def serve(settings: FeedbackSettings | None = None) -> None:
    settings = settings or FeedbackSettings()
    set_build_info("feedback")
    server = FeedbackServer(settings)
    register_store_collector(server.core.metrics_stats)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # garbage collector's full passes, which otherwise pause request handling under load.
    gc.freeze()
    server.serve_until_signal()
