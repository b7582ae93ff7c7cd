"""``python -m services.inference.gateway``: serve the public API until SIGTERM."""

from __future__ import annotations

from services.common.runtime import run_service
from services.inference.gateway.server import GatewayServer
from services.inference.gateway.settings import GatewaySettings


def main() -> int:
    settings = GatewaySettings()
    return run_service("gateway", settings, lambda: GatewayServer(settings).process)


if __name__ == "__main__":
    raise SystemExit(main())
