"""``python -m services.feedback [serve|migrate]``: run the service, or only migrate its store."""

from __future__ import annotations

import argparse

from services.common.logging_setup import configure_logging
from services.common.runtime import run_service
from services.feedback.settings import FeedbackSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.feedback")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = FeedbackSettings()
    if args.command == "migrate":
        from services.feedback.store.database import migrate

        configure_logging("feedback", settings.log_level, settings.log_format)
        migrate(settings.resolved_database_url)
        return 0
    from services.feedback.server import build_process

    return run_service("feedback", settings, lambda: build_process(settings))


if __name__ == "__main__":
    raise SystemExit(main())
