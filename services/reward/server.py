"""The reward service process: load the RM, then serve RewardService and ModelAdmin.

Health says NOT_SERVING until a version is loaded (the process is alive meanwhile).
"""

from __future__ import annotations

import logging

from services.common.generated.flywheel.v1 import admin_pb2_grpc, reward_pb2_grpc
from services.common.grpc_server import GrpcServer
from services.common.model_admin import ModelAdminServicer
from services.common.promotions import PromotionWatcher
from services.common.registry import ModelRegistry
from services.reward.grpc_service import RewardServicer
from services.reward.scorer import ROLE, RewardScorer
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
        self.grpc = GrpcServer(port=settings.grpc_port, max_workers=64)
        self.grpc.add(
            reward_pb2_grpc.add_RewardServiceServicer_to_server,
            RewardServicer(self.scorer),
            "flywheel.v1.RewardService",
        )
        self.grpc.add(
            admin_pb2_grpc.add_ModelAdminServicer_to_server,
            ModelAdminServicer(ROLE, self.scorer),
            "flywheel.v1.ModelAdmin",
        )

    def start(self) -> int:
        """Serve (not ready yet), load the model, then report ready; the bound port."""
        self.scorer.start()
        port = self.grpc.start()
        self.scorer.reload(self.settings.version)
        self.grpc.set_serving(True)
        self.watcher.start()
        return port

    def _follow_promotion(self, version: str) -> None:
        previous, current = self.scorer.reload(version)
        if previous != current:
            log.info("followed a promotion: reward %s -> %s", previous, current)

    def stop(self) -> None:
        self.watcher.stop()
        self.grpc.stop(self.settings.drain_timeout_s)
        self.scorer.stop()
