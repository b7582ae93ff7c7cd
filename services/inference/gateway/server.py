"""The gateway process: the public HTTP API and the recorder that drains the spool.

Shutdown: stop taking requests (those in flight finish within ``drain_timeout_s`` and
reach the spool), then give the recorder the same time to deliver; what it could not
deliver stays in the spool file for the next start.
"""

from __future__ import annotations

import logging

import httpx
import redis

from services.common.api_keys import ApiKeyStore
from services.common.http_server import HttpServerThread
from services.common.revocations import RevocationPublisher
from services.common.runtime import Part, ServiceProcess
from services.inference.gateway import chat
from services.inference.gateway.app import create_app
from services.inference.gateway.canary import CanaryRouter
from services.inference.gateway.engine_client import EngineClient
from services.inference.gateway.rate_limit import RateLimiter
from services.inference.gateway.recorder import InteractionRecorder
from services.inference.gateway.reward_client import RewardClient
from services.inference.gateway.settings import GatewaySettings
from services.inference.gateway.spool import InteractionSpool

log = logging.getLogger(__name__)


class GatewayServer:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = ApiKeyStore(settings.resolved_api_keys_file)
        self.spool = InteractionSpool(settings.resolved_spool_path)
        self.recorder = InteractionRecorder.from_settings(settings, self.spool)
        deps = chat.ChatDeps(
            engine=EngineClient(settings.engine_url, settings.request_timeout_s),
            router=CanaryRouter(
                httpx.AsyncClient(base_url=settings.engine_url, timeout=2.0),
                settings.canary_refresh_s,
            ),
            reward=RewardClient(settings.reward_grpc_target, settings.resolved_service_token()),
            spool=self.spool,
            max_messages=settings.max_messages,
            max_n=settings.max_n,
            default_max_tokens=settings.default_max_tokens,
        )
        self.revocations = RevocationPublisher(
            self.keys.revoked_ids,
            redis.Redis.from_url(settings.redis_url, socket_timeout=2),
            settings.revocation_publish_s,
        )
        limiter = RateLimiter.from_url(settings.redis_url)
        app = create_app(settings, self.keys, limiter, deps)
        self.http = HttpServerThread(
            app, settings.http_host, settings.http_port, settings.drain_timeout_s
        )

        # Stopped in reverse: HTTP drains (answers in flight reach the spool), then the
        # recorder gets the same time to deliver; what it cannot stays in the spool file.
        self.process = ServiceProcess(
            "gateway",
            [
                Part("spool", stop=self.spool.close),
                Part("revocations", self.revocations.start, self.revocations.stop),
                Part("recorder", self.recorder.start, self._stop_recorder),
                Part("http", self.http.start, self.http.stop, lambda: self.http.alive),
            ],
        )

    def _stop_recorder(self) -> None:
        left = self.recorder.stop(self.settings.drain_timeout_s)
        if left:
            log.warning("%d answers wait in the spool for the feedback service", left)

    def start(self) -> None:
        self.process.start()
        log.info(
            "gateway ready",
            extra={"http_port": self.http.port, "spool_pending": self.spool.pending_count()},
        )

    def stop(self) -> None:
        self.process.stop()
