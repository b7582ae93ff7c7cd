"""``python -m services.reward``: serve the promoted reward model until SIGTERM."""

from __future__ import annotations

from services.common.openmp import keep_workers_spinning

keep_workers_spinning()  # before torch is imported

from services.common.runtime import run_service
from services.reward.server import RewardServer
from services.reward.settings import RewardSettings


def main() -> int:
    settings = RewardSettings()
    return run_service(
        "reward",
        settings,
        lambda: RewardServer(settings).process,
        metrics_address=(settings.metrics_host, settings.metrics_port),
    )


if __name__ == "__main__":
    raise SystemExit(main())
