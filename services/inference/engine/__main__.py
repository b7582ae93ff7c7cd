"""``python -m services.inference.engine``: serve the promoted policy until SIGTERM."""

from __future__ import annotations

from services.common.openmp import keep_workers_spinning

keep_workers_spinning()  # before torch is imported

from services.common.logging_setup import configure_logging
from services.common.metrics import set_build_info
from services.inference.engine.server import EngineServer
from services.inference.engine.settings import EngineSettings


def main() -> int:
    settings = EngineSettings()
    configure_logging("engine", settings.log_level, settings.log_format)
    set_build_info("engine")
    EngineServer(settings).process.serve_until_signal()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
