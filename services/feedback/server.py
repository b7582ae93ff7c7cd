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
from services.common.http_server import HttpServerThread
from services.common.runtime import Part, ServiceProcess
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
        )
        self._http = HttpServerThread(
            create_app(self.core), settings.http_host, settings.http_port, settings.drain_timeout_s
        )
        drain = settings.drain_timeout_s
        # Stopped in reverse: not ready, HTTP drained, gRPC drained, then the writer commits
        # what it holds and the relay delivers what it can.
        self.process = ServiceProcess(
            "feedback service",
            [
                Part("store", self.core.start, self.core.stop),
                Part("grpc", self._grpc.start, lambda: self._grpc.stop(drain), self._grpc.alive),
                Part("http", self._http.start, self._http.stop, lambda: self._http.alive),
                Part("ready", self._ready, self._not_serving),
            ],
        )

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def grpc_port(self) -> int:
        return self._grpc.port

    def _not_serving(self) -> None:
        self._grpc.set_serving(False)

    def _ready(self) -> None:
        self._grpc.set_serving(True)
        log.info(
            "feedback service ready",
            extra={
                "http_port": self.http_port,
                "grpc_port": self.grpc_port,
                "database": engine_url_for_logs(self.settings.resolved_database_url),
            },
        )

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()


def build_process(settings: FeedbackSettings) -> ServiceProcess:
    """The process ``python -m services.feedback`` runs."""
    server = FeedbackServer(settings)
    register_store_collector(server.core.metrics_stats)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # garbage collector's full passes, which otherwise pause request handling under load.
    gc.freeze()
    return server.process
