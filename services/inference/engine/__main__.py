"""``python -m services.inference.engine``: serve the promoted policy until SIGTERM."""

from __future__ import annotations

from services.common.openmp import keep_workers_spinning

keep_workers_spinning()  # before torch is imported

from services.common.runtime import run_service
from services.inference.engine.server import EngineServer
from services.inference.engine.settings import EngineSettings


def main() -> int:
    settings = EngineSettings()
    return run_service("engine", settings, lambda: EngineServer(settings).process)


if __name__ == "__main__":
    raise SystemExit(main())
