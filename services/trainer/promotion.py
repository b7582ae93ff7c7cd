"""Promoting and rolling back versions: the registry is the truth, the announcement on Redis
makes the engine and the reward service switch at once (they also poll the registry, so a
lost announcement only delays the switch)."""

from __future__ import annotations

import logging

import redis

from services.common.promotions import announce_promotion
from services.common.registry import ModelRegistry
from services.trainer import metrics

log = logging.getLogger(__name__)


def _announce(redis_url: str, role: str, version: str, action: str) -> None:
    try:
        announce_promotion(redis_url, role, version, action)
    except redis.RedisError:
        log.warning("could not announce %s/%s; servers pick it up on their poll", role, version)


def promote(registry: ModelRegistry, redis_url: str, role: str, version: str) -> None:
    registry.promote(role, version)
    _announce(redis_url, role, version, "promote")
    metrics.PROMOTIONS.labels(role).inc()
    log.info("promoted %s/%s", role, version)


def roll_back(registry: ModelRegistry, redis_url: str, role: str) -> str:
    """Promote the promoted version's parent again; the version now serving."""
    info = registry.rollback(role)
    _announce(redis_url, role, info.version, "rollback")
    metrics.ROLLBACKS.labels(role).inc()
    log.warning("rolled %s back to %s", role, info.version)
    return info.version
