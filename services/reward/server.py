"""The reward service process: load the RM, then serve RewardService and ModelAdmin.

Health says NOT_SERVING until a version is loaded (the process is alive meanwhile). A fresh
stack has a policy but no reward model until the trainer makes one: then the service keeps
serving NOT_SERVING and loads the RM when a promotion arrives (announcement or registry poll)
or when ModelAdmin.Reload is called, instead of crashing and being restarted in a loop.
"""

from __future__ import annotations

import logging

from services.common.generated.flywheel.v1 import admin_pb2_grpc, reward_pb2_grpc
from services.common.grpc_server import GrpcServer
from services.common.model_admin import ModelAdminServicer
from services.common.promotions import PromotionWatcher
from services.common.registry import ModelRegistry, VersionNotFoundError
from services.common.runtime import Part, ServiceProcess
from services.reward.grpc_service import RewardServicer
from services.reward.scorer import ROLE, RewardScorer, ServedModel
from services.reward.settings import RewardSettings

log = logging.getLogger(__name__)


class RewardServer:
    def __init__(self, settings: RewardSettings) -> None:
        self.settings = settings
        self.scorer = RewardScorer(
            ModelRegistry(settings.model_store_dir),
            device=settings.device,
            precision=settings.precision,
            packed=settings.packed,
            max_tokens=settings.max_tokens,
            max_batch=settings.max_batch,
            window_s=settings.batch_window_ms / 1000,
            max_queue=settings.max_queue,
        )
        self.watcher = PromotionWatcher(
            self.scorer.registry,
            ROLE,
            self._follow_promotion,
            settings.redis_url,
            poll_s=settings.registry_poll_s,
        )
        self.grpc = GrpcServer(
            settings.grpc_host,
            settings.grpc_port,
            service_token=settings.resolved_service_token(),
            max_workers=64,
        )
        self.grpc.add(
            reward_pb2_grpc.add_RewardServiceServicer_to_server,
            RewardServicer(self.scorer),
        )
        self.grpc.add(
            admin_pb2_grpc.add_ModelAdminServicer_to_server,
            ModelAdminServicer(ROLE, self),
        )
        drain = settings.drain_timeout_s
        self.process = ServiceProcess(
            "reward service",
            [
                Part("scorer", self.scorer.start, self.scorer.stop),
                Part("grpc", self.grpc.start, lambda: self.grpc.stop(drain), self.grpc.alive),
                Part("model", self._load_first_model),
                Part("promotions", self.watcher.start, self.watcher.stop),
            ],
        )

    @property
    def current(self) -> ServedModel | None:
        return self.scorer.current

    def reload(self, version: str = "") -> tuple[str, str]:
        """Load ``version`` (ModelAdmin's contract), then report ready: the first load may come
        after start, when the service waited for a promoted reward model."""
        previous, current = self.scorer.reload(version)
        self.grpc.set_serving(True)
        return previous, current

    def start(self) -> int:
        """Serve (not ready yet), load the model, then report ready; the bound port."""
        self.process.start()
        return self.grpc.port

    def _load_first_model(self) -> None:
        """With no version asked for and none promoted yet, stay up and NOT_SERVING: the
        promotion watcher loads the first reward model when one is promoted."""
        try:
            self.reload(self.settings.version)
        except VersionNotFoundError:
            if self.settings.version:  # an operator asked for a version that is not there
                raise
            log.warning(
                "no reward model is promoted yet: waiting for one (health NOT_SERVING until "
                "the trainer or `flywheel models promote` promotes a reward version)"
            )

    def _follow_promotion(self, version: str) -> None:
        previous, current = self.reload(version)
        if previous != current:
            log.info("followed a promotion: reward %s -> %s", previous or "none", current)

    def stop(self) -> None:
        self.process.stop()
