"""Tell running services that the promoted version of a role changed.

Best effort by design: the registry's state file is the truth, Redis pub/sub is
only the fast path. A service that misses the message (Redis down, service
restarting) still finds the promoted version when it next reads the registry.
"""

from __future__ import annotations

import json

import redis

from services.common.redis_names import MODEL_PROMOTIONS_CHANNEL


def announce_promotion(redis_url: str, role: str, version: str, action: str) -> int:
    """Publish the change; returns how many subscribers received it. Raises on Redis errors."""
    message = json.dumps({"role": role, "version": version, "action": action})
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return int(client.publish(MODEL_PROMOTIONS_CHANNEL, message))
    finally:
        client.close()
