"""Promoting, canaries and rolling back: the registry is the truth, the announcement on Redis
makes the engine and the reward service switch at once (they also poll the registry, so a
lost announcement only delays the switch). Every registry write the trainer makes goes
through here."""

from __future__ import annotations

import logging

import redis

from services.common.promotions import announce_promotion
from services.common.registry import Canary, ModelRegistry
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


def start_canary(
    registry: ModelRegistry, redis_url: str, role: str, version: str, share: float
) -> Canary:
    canary = registry.start_canary(role, version, share)
    _announce(redis_url, role, version, "canary")
    log.info("%s/%s serves %.0f%% of the API keys as a canary", role, version, 100 * share)
    return canary


def end_canary(registry: ModelRegistry, redis_url: str, role: str, reason: str) -> Canary:
    """Take the canary off the traffic as a loser (an automatic rollback)."""
    canary = registry.end_canary(role, reason)
    _announce(redis_url, role, canary.version, "end-canary")
    metrics.ROLLBACKS.labels(role).inc()
    log.warning("rolled the %s canary %s back: %s", role, canary.version, reason)
    return canary


def reject(registry: ModelRegistry, role: str, version: str, reason: str) -> None:
    """Mark a candidate a gate refused, so it is never promoted by accident (a retried
    verdict finds it rejected already)."""
    if registry.get(role, version).status == "candidate":
        registry.reject(role, version, reason)
        log.info("rejected %s/%s: %s", role, version, reason)
