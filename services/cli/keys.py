"""``flywheel keys ...``: API keys of the public API (the gateway's key file).

``revoke`` removes the key from the file (the gateway refuses it within a second) and
publishes the revocation on Redis at once, so the feedback service refuses the key's votes
and its feedback tokens too (services/common/revocations.py).
"""

from __future__ import annotations

import argparse
import sys

import redis

from services.common.api_keys import ApiKeyStore
from services.common.revocations import publish_revocations
from services.inference.gateway.settings import GatewaySettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="API keys of the public API")
    sub = keys.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a key (printed once, never stored)")
    create.add_argument("name", help="who or what the key is for")
    create.add_argument("--requests-per-minute", type=float, help="rate-limit override")
    create.add_argument("--burst", type=int, help="rate-limit burst override")
    sub.add_parser("list", help="key ids, names and creation times")
    revoke = sub.add_parser("revoke", help="revoke a key everywhere (gateway and feedback)")
    revoke.add_argument("key_id", help="the key's id (key_...), as `flywheel keys list` shows")


def run(args: argparse.Namespace) -> int:
    settings = GatewaySettings()
    store = ApiKeyStore(settings.resolved_api_keys_file)
    match args.action:
        case "create":
            key, record = store.create(
                args.name,
                rate_limit_requests_per_minute=args.requests_per_minute,
                rate_limit_burst=args.burst,
            )
            print(f"{record.id}  {record.name}\n{key}\n(shown once: keep it now)")
        case "list":
            revoked = store.revoked_ids()
            for record in store.list_keys():
                print(f"{record.id}  {record.created_at.isoformat()}  {record.name}")
            if revoked:
                print(f"revoked: {', '.join(sorted(revoked))}")
        case "revoke":
            if not store.revoke(args.key_id):
                print(f"error: no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
            _publish(settings.redis_url, args.key_id)
    return 0


def _publish(redis_url: str, key_id: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        publish_revocations(client, [key_id])
        print("published to the feedback service through Redis")
    except redis.RedisError as exc:
        print(
            f"warning: Redis unreachable ({exc}); the gateway publishes the revocation to the "
            "feedback service when Redis answers again",
            file=sys.stderr,
        )
    finally:
        client.close()
