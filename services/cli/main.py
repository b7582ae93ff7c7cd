"""``flywheel``: the one front door for operators, the local stack and the tests."""

from __future__ import annotations

import argparse
import sys

from services.cli import keys, models, stack, train
from services.common.logging_setup import configure_logging
from services.common.registry import RegistryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flywheel", description="Flywheel: improve a chat model from its users' feedback."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    models.add_parser(subparsers)
    keys.add_parser(subparsers)
    train.add_parser(subparsers)
    stack.add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("cli", level="WARNING", fmt="text")
    try:
        if args.command == "models":
            return models.run(args)
        if args.command == "keys":
            return keys.run(args)
        if args.command == "train":
            return train.run(args)
        return stack.run(args)
    except (RegistryError, stack.StackError, train.TrainerUnreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
