"""The engine process: HTTP (TGI protocol + OpenAI chat), the ModelAdmin gRPC service, the
scheduler thread, and following promotions.

Start order: HTTP first (so liveness answers and /health says 503 while weights load),
then the model, then readiness. Shutdown: stop taking requests, let those in flight
finish within ``drain_timeout_s``, stop the scheduler.
"""

from __future__ import annotations

import logging

import torch

from services.common.generated.flywheel.v1 import admin_pb2_grpc
from services.common.grpc_server import GrpcServer
from services.common.http_server import HttpServerThread
from services.common.model_admin import ModelAdminServicer
from services.common.promotions import PromotionWatcher
from services.common.registry import ModelRegistry
from services.common.runtime import Part, ServiceProcess
from services.inference.engine.app import create_app
from services.inference.engine.policies import ROLE, PolicyHolder
from services.inference.engine.runner import Runner
from services.inference.engine.scheduler import Scheduler
from services.inference.engine.settings import EngineSettings

log = logging.getLogger(__name__)


class EngineServer:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.policies = PolicyHolder(
            ModelRegistry(settings.model_store_dir),
            settings.device,
            settings.precision,
            fast_decode=settings.fast_decode,
            prefix_cache_mb=settings.prefix_cache_mb,
        )
        self.scheduler = Scheduler(
            max_batch_size=settings.max_batch_size,
            max_concurrent_requests=settings.max_concurrent_requests,
            max_prefill_tokens=settings.max_prefill_tokens,
        )
        self.runner = Runner(settings, self.policies, self.scheduler)
        app = create_app(self.runner)
        self.http = HttpServerThread(
            app, settings.http_host, settings.http_port, settings.drain_timeout_s
        )
        self.admin = GrpcServer(
            settings.admin_grpc_host,
            settings.admin_grpc_port,
            service_token=settings.resolved_service_token(),
            max_workers=4,
        )
        self.admin.add(
            admin_pb2_grpc.add_ModelAdminServicer_to_server,
            ModelAdminServicer(ROLE, self.policies),
        )
        self.watcher = PromotionWatcher(
            self.policies.registry,
            ROLE,
            self._follow_promotion,
            settings.redis_url,
            poll_s=settings.registry_poll_s,
            on_canary=self.policies.follow_canary,
        )

        drain = settings.drain_timeout_s
        # HTTP first, so liveness answers and /health says 503 while the weights load.
        self.process = ServiceProcess(
            "engine",
            [
                Part("scheduler", self.scheduler.start, self.scheduler.stop, self._scheduler_alive),
                Part("http", self.http.start, self.http.stop, lambda: self.http.alive),
                Part("admin grpc", self.admin.start, lambda: self.admin.stop(drain)),
                Part("model", self._load_models),
                Part("ready", lambda: self.admin.set_serving(True), self._not_serving),
                Part("promotions", self.watcher.start, self.watcher.stop),
            ],
        )

    def _load_models(self) -> None:
        self.policies.reload(self.settings.version)
        self.policies.follow_canary(self.policies.registry.canary(ROLE))

    def _scheduler_alive(self) -> bool:
        return self.scheduler.alive

    def _not_serving(self) -> None:
        self.admin.set_serving(False)

    def start(self) -> None:
        self.process.start()
        log.info(
            "engine ready",
            extra={"http_port": self.http.port, "admin_grpc_port": self.admin.port},
        )

    def _follow_promotion(self, version: str) -> None:
        previous, current = self.policies.reload(version)
        if previous != current:
            log.info("followed a promotion: policy %s -> %s", previous, current)

    def stop(self) -> None:
        self.process.stop()
