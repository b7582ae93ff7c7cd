"""Revoked API keys, shared through Redis so that every service refuses them.

The gateway owns the key file and refuses a revoked key as soon as it re-reads the file.
The feedback service authenticates clients by the fingerprint of their key (it never sees
the key file), so it learns of revocations from the Redis set ``REVOKED_API_KEYS``:

- :class:`RevocationPublisher` (gateway): adds the key file's revoked ids to the set every
  few seconds, so a revocation made while Redis was down, or a Redis that lost its data,
  still converges. ``flywheel keys revoke`` also adds the id at once.
- :class:`RevokedKeys` (feedback): a local copy of the set refreshed every
  ``refresh_s``; a check is a set lookup, no Redis round trip on the hot path. If Redis is
  unreachable the last copy stays in force (a revocation waits for Redis to come back).

So a revoked key stops rating within about ``refresh_s`` of the revocation reaching Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import redis

from services.common.periodic import Periodic
from services.common.redis_names import REVOKED_API_KEYS


def publish_revocations(client: redis.Redis, key_ids: Iterable[str]) -> None:
    ids = sorted(key_ids)
    if ids:
        client.sadd(REVOKED_API_KEYS, *ids)


class RevocationPublisher:
    """Keeps Redis's revoked set a superset of the key file's revoked ids."""

    def __init__(
        self, revoked_ids: Callable[[], frozenset[str]], client: redis.Redis, interval_s: float
    ) -> None:
        self._revoked_ids, self._client = revoked_ids, client
        self._published: frozenset[str] = frozenset()
        self._task = Periodic("revocation-publisher", interval_s, self._publish)

    def _publish(self) -> None:
        ids = self._revoked_ids()
        if ids - self._published:
            publish_revocations(self._client, ids)
            self._published = ids

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()


class RevokedKeys:
    """The revoked key ids, as last read from Redis."""

    def __init__(self, client: redis.Redis, refresh_s: float) -> None:
        self._client = client
        self._ids: frozenset[str] = frozenset()
        self._task = Periodic("revoked-keys", refresh_s, self.refresh)

    def refresh(self) -> None:
        self._ids = frozenset(
            m.decode() if isinstance(m, bytes) else m
            for m in self._client.smembers(REVOKED_API_KEYS)
        )

    def __contains__(self, key_id: str) -> bool:
        return key_id in self._ids

    def start(self) -> None:
        self._task.run_once()  # in force before the first request, if Redis answers
        self._task.start()

    def stop(self) -> None:
        self._task.stop()
