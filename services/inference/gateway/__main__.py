"""``python -m services.inference.gateway``: serve the public API until SIGTERM."""

from __future__ import annotations

from services.common.logging_setup import configure_logging
from services.common.metrics import set_build_info
from services.inference.gateway.server import GatewayServer
from services.inference.gateway.settings import GatewaySettings


def main() -> int:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    set_build_info("gateway")
    GatewayServer(settings).process.serve_until_signal()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
