"""Per-API-key rate limits, shared by every gateway replica through Redis.

The limit is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a
key may make ``burst`` requests at once, and then one every ``60 / requests_per_minute``
seconds. The whole decision is one Lua script, so concurrent replicas cannot both take the
last slot, and it uses Redis's clock, so replicas with skewed clocks still agree. One Redis
key per API key (``flywheel:gateway:ratelimit:<key id>``) holding the "theoretical arrival
time", expiring when the bucket is full again: an idle key costs nothing.

**If Redis is unreachable, requests are allowed (fail open).** This is a deliberate choice:
the rate limit protects capacity, not data, and an unavailable Redis should not take the
public API down with it. The first failure logs a warning (and recovery an info line), every
failed check counts ``flywheel_gateway_rate_limit_errors_total``, and for ``open_for_s`` after
a failure Redis is not asked at all, so a Redis that hangs does not add its timeout to every
request.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.api_keys import KeyRecord
from services.common.redis_names import rate_limit_key
from services.inference.gateway import metrics
from services.inference.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


# KEYS[1]: the bucket. ARGV: emission interval (us per request), burst, cost.
# Returns {allowed (0/1), retry_after (us), remaining, reset_after (us)}.
# Times are integer microseconds (exact in Lua's doubles) and stored with %.0f, since
# tostring() would print a 16-digit number with only 14 significant digits.
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, allow_at - now, 0, tat - now}
end
local reset_after = new_tat - now
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(reset_after / 1000))
return {1, 0, math.floor((interval * burst - reset_after) / interval), reset_after}
"""


@dataclass(frozen=True)
class RateLimitPolicy:
    """``burst`` requests at once, refilled at ``requests_per_minute``."""

    requests_per_minute: float
    burst: int

    @classmethod
    def for_key(cls, settings: GatewaySettings, record: KeyRecord | None) -> RateLimitPolicy:
        """The gateway's policy with the key's own overrides applied."""
        rpm = settings.rate_limit_requests_per_minute
        burst = settings.rate_limit_burst
        if record is not None:
            if record.rate_limit_requests_per_minute is not None:
                rpm = record.rate_limit_requests_per_minute
            if record.rate_limit_burst is not None:
                burst = record.rate_limit_burst
        return cls(rpm, burst)

    @property
    def interval_us(self) -> int:
        return max(1, round(60_000_000 / self.requests_per_minute))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float
    """0 if allowed; else how long until this request would be allowed (``Retry-After``)."""
    remaining: int
    """Requests still allowed right now after this one (``X-RateLimit-Remaining``)."""
    limit: int
    """The burst (``X-RateLimit-Limit``)."""
    reset_after_s: float
    """How long until the bucket is full again (``X-RateLimit-Reset``)."""
    degraded: bool = False
    """True when Redis could not be asked and the request was let through (fail open)."""


class RateLimiter:
    """Checks requests against per-key GCRA buckets in Redis (asyncio client)."""

    def __init__(self, client: aioredis.Redis, *, open_for_s: float = 1.0) -> None:
        self._client = client
        self._script = client.register_script(_GCRA_LUA)
        self.open_for_s = open_for_s
        self._skip_until = 0.0
        self._failing = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25, open_for_s: float = 1.0) -> RateLimiter:
        """A limiter with its own client, with short timeouts: a rate-limit check must not hold
        a request up for long when Redis is slow."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        return cls(client, open_for_s=open_for_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _fail_open(self, policy: RateLimitPolicy) -> Decision:
        metrics.RATE_LIMIT_ERRORS.inc()
        return Decision(True, 0.0, policy.burst, policy.burst, 0.0, degraded=True)

    async def check(self, api_key_id: str, policy: RateLimitPolicy, cost: int = 1) -> Decision:
        """Take ``cost`` requests from the key's bucket if it has them.

        ``cost`` is capped at the burst (a request can always be served once the bucket is
        full, e.g. one with many candidates from a key with a small burst).
        """
        if time.monotonic() < self._skip_until:
            return self._fail_open(policy)
        cost = max(1, min(cost, policy.burst))
        try:
            allowed, retry_us, remaining, reset_us = await self._script(
                keys=[rate_limit_key(api_key_id)], args=[policy.interval_us, policy.burst, cost]
            )
        except RedisError as error:
            self._skip_until = time.monotonic() + self.open_for_s
            if not self._failing:
                log.warning(
                    "rate limit check failed (%s): serving requests without rate limits until "
                    "Redis answers again",
                    error,
                )
                self._failing = True
            return self._fail_open(policy)
        if self._failing:
            log.info("Redis answers again: rate limits are enforced")
            self._failing = False
        if not allowed:
            metrics.RATE_LIMITED.inc()
        return Decision(
            allowed=bool(allowed),
            retry_after_s=int(retry_us) / 1e6,
            remaining=int(remaining),
            limit=policy.burst,
            reset_after_s=int(reset_us) / 1e6,
        )


def retry_after_header(decision: Decision) -> str:
    """``Retry-After`` in whole seconds, rounded up (a client that waits that long succeeds)."""
    return str(max(1, math.ceil(decision.retry_after_s)))
