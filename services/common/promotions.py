"""Promotions: announcing that the promoted version of a role changed, and following it.

Two paths: the Redis channel (fast; :func:`announce_promotion` publishes a message per promote
or rollback, best effort) and a periodic look at the registry (the truth; catches messages
missed while Redis was down or the service was restarting). :class:`PromotionWatcher` calls
back with the role's promoted version name on its own thread, and, if asked, with its canary
(or None once it ends); the callbacks should be idempotent (ModelAdmin.Reload is).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import redis

from services.common.redis_names import model_promotions_channel
from services.common.registry import Canary, ModelRegistry
from services.common.retry import Backoff, Outage

log = logging.getLogger(__name__)


def announce_promotion(redis_url: str, role: str, version: str, action: str) -> int:
    """Publish the change; returns how many subscribers received it. Raises on Redis errors
    (callers treat it as best effort: the registry's state file is the truth)."""
    message = json.dumps({"role": role, "version": version, "action": action})
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return int(client.publish(promotions_channel(client), message))
    finally:
        client.close()


def promotions_channel(client: redis.Redis) -> str:
    """The promotion channel of the database ``client`` selects."""
    return model_promotions_channel(int(client.connection_pool.connection_kwargs.get("db", 0)))


class PromotionWatcher:
    def __init__(
        self,
        registry: ModelRegistry,
        role: str,
        on_promoted: Callable[[str], None],
        redis_url: str,
        *,
        poll_s: float = 30.0,
        on_canary: Callable[[Canary | None], None] | None = None,
    ) -> None:
        self._registry = registry
        self._role = role
        self._on_promoted = on_promoted
        self._on_canary = on_canary
        self._redis_url = redis_url
        self._poll_s = poll_s
        self._stopping = threading.Event()
        self._check = threading.Event()
        self._threads = [
            threading.Thread(target=self._listen, name=f"{role}-promotions", daemon=True),
            threading.Thread(target=self._follow, name=f"{role}-registry-poll", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._check.set()
        for thread in self._threads:
            thread.join(5)

    def _listen(self) -> None:
        """Turn channel messages for our role into an immediate registry check."""
        backoff = Backoff(0.5, 5.0)
        outage = Outage(log, "promotion channel (the registry poll goes on meanwhile)")
        while not self._stopping.is_set():
            client = redis.Redis.from_url(self._redis_url, socket_connect_timeout=2)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(promotions_channel(client))
                outage.recovered()
                backoff.succeeded()
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and json.loads(message["data"]).get("role") == self._role:
                        self._check.set()
            except (redis.RedisError, OSError, ValueError) as error:
                outage.failed(error)
                self._stopping.wait(backoff.failed())
            finally:
                client.close()

    def _follow(self) -> None:
        """Check the registry on each announcement and every ``poll_s`` seconds."""
        last_promoted, last_canary = None, None
        while not self._stopping.is_set():
            self._check.wait(self._poll_s)
            self._check.clear()
            if self._stopping.is_set():
                return
            serving = self._registry.serving(self._role)
            if serving.promoted is not None and serving.promoted != last_promoted:
                try:
                    self._on_promoted(serving.promoted)
                    last_promoted = serving.promoted
                except Exception:
                    log.exception(
                        "could not switch to %s/%s; will retry", self._role, serving.promoted
                    )
            if self._on_canary is not None and serving.canary != last_canary:
                try:
                    self._on_canary(serving.canary)
                    last_canary = serving.canary
                except Exception:
                    log.exception("could not follow the %s canary; will retry", self._role)
