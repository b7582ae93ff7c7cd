"""``flywheel models ...``: operate the model registry."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import redis

from services.cli.settings import CliSettings
from services.common.promotions import announce_promotion
from services.common.registry import ROLES, ModelRegistry, VersionInfo, parse_ref


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="the model registry")
    sub = models.add_subparsers(dest="action", required=True)

    init = sub.add_parser("init", help="convert the shipped base model into policy/v0, promoted")
    init.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny random model with the base tokenizer instead (tests, quick demos)",
    )
    listing = sub.add_parser("list", help="versions of every role with their status")
    listing.add_argument("role", nargs="?", choices=ROLES)
    listing.add_argument("--json", action="store_true", help="one JSON document")

    show = sub.add_parser("show", help="a version's manifest, status and folder")
    show.add_argument("ref", help="role/vN, or role for the promoted version")

    verify = sub.add_parser("verify", help="check a version's files against their checksums")
    verify.add_argument("ref")

    promote = sub.add_parser("promote", help="make a version the one that serves")
    promote.add_argument("ref", help="role/vN")
    promote.add_argument("--force", action="store_true", help="promote even a rejected version")

    rollback = sub.add_parser("rollback", help="withdraw the promoted version")
    rollback.add_argument("role", choices=ROLES)
    rollback.add_argument("--to", help="version to promote instead (default: the parent)")

    reject = sub.add_parser("reject", help="mark a candidate as failed")
    reject.add_argument("ref", help="role/vN")
    reject.add_argument("--reason", default="")


def run(args: argparse.Namespace) -> int:
    settings = CliSettings()
    registry = ModelRegistry(settings.model_store_dir)
    match args.action:
        case "init":
            # Imported here: it pulls in torch and transformers, which the other commands do not.
            from services.common.base_model import init_policy_v0, init_tiny_policy_v0

            info, created = (init_tiny_policy_v0 if args.tiny else init_policy_v0)(registry)
            verb = "created" if created else "already present:"
            print(f"{verb} {info.id} ({info.status}) in {info.path}")
        case "list":
            _print_list(registry, [args.role] if args.role else list(ROLES), args.json)
        case "show":
            print(json.dumps(_describe(registry.resolve(args.ref)), indent=2))
        case "verify":
            info = registry.resolve(args.ref)
            registry.verify(info.manifest.role, info.version)
            print(f"{info.id}: {len(info.manifest.files)} files match their checksums")
        case "promote":
            role, version = _explicit_version(args.ref)
            info = registry.promote(role, version, force=args.force)
            print(f"promoted {info.id}")
            _announce(settings, role, info.version, "promote")
        case "rollback":
            info = registry.rollback(args.role, to=args.to)
            print(f"rolled back {args.role}: {info.id} serves now")
            _announce(settings, args.role, info.version, "rollback")
        case "reject":
            role, version = _explicit_version(args.ref)
            info = registry.reject(role, version, reason=args.reason)
            print(f"rejected {info.id}")
    return 0


def _explicit_version(ref: str) -> tuple[str, str]:
    role, version = parse_ref(ref)
    if version is None:
        raise SystemExit(f"error: name a version, e.g. {role}/v1")
    return role, version


def _describe(info: VersionInfo) -> dict:
    return {**asdict(info.manifest), "id": info.id, "status": info.status, "path": str(info.path)}


def _print_list(registry: ModelRegistry, roles: list[str], as_json: bool) -> None:
    if as_json:
        document = {
            role: {
                "versions": [_describe(info) for info in registry.versions(role)],
                "problems": dict(registry.problems(role)),
            }
            for role in roles
        }
        print(json.dumps(document, indent=2))
        return
    print(f"{'VERSION':<14} {'STATUS':<12} {'PARENT':<8} {'CREATED':<26} {'SNAPSHOT':<14} METRICS")
    for role in roles:
        for info in registry.versions(role):
            metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(info.manifest.metrics.items()))
            print(
                f"{info.id:<14} {info.status:<12} {info.manifest.parent or '-':<8} "
                f"{info.manifest.created_at:<26} {info.manifest.data_snapshot_id or '-':<14} "
                f"{metrics or '-'}"
            )
        for version, problem in registry.problems(role):
            print(f"{role + '/' + version:<14} {'UNREADABLE':<12} {problem}")


def _announce(settings: CliSettings, role: str, version: str, action: str) -> None:
    try:
        receivers = announce_promotion(settings.redis_url, role, version, action)
        print(f"announced on Redis to {receivers} subscriber(s)")
    except redis.RedisError as exc:
        print(
            f"warning: could not announce on Redis ({exc}); "
            "services will see the change when they next read the registry",
            file=sys.stderr,
        )
