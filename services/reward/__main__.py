"""``python -m services.reward``: serve the promoted reward model until SIGTERM."""

from __future__ import annotations

from services.common.openmp import keep_workers_spinning

keep_workers_spinning()  # before torch is imported

from services.common.logging_setup import configure_logging
from services.common.metrics import set_build_info, start_metrics_server
from services.reward.server import RewardServer
from services.reward.settings import RewardSettings


def main() -> int:
    settings = RewardSettings()
    configure_logging("reward", settings.log_level, settings.log_format)
    set_build_info("reward")
    start_metrics_server(settings.metrics_port, settings.metrics_host)
    RewardServer(settings).process.serve_until_signal()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
