"""Per-key rate limits against real Redis: burst, refusal with a usable Retry-After, refill,
one budget shared by replicas, independent keys, and serving on when Redis is down."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from datetime import UTC, datetime

import redis
from prometheus_client import REGISTRY

from services.common.api_keys import KeyRecord
from services.common.redis_names import rate_limit_key
from services.inference.gateway.rate_limit import (
    RateLimiter,
    RateLimitPolicy,
    retry_after_header,
)
from services.inference.gateway.settings import GatewaySettings
from tests.harness import free_port

PER_MINUTE_60 = RateLimitPolicy(requests_per_minute=60, burst=3)


def test_burst_then_refused_with_retry_after(gateway_redis_url):
    async def main():
        limiter = RateLimiter.from_url(gateway_redis_url)
        try:
            decisions = [await limiter.check("key_a", PER_MINUTE_60) for _ in range(4)]
        finally:
            await limiter.aclose()
        return decisions

    decisions = asyncio.run(main())
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.limit == 3
    assert 0.9 < refused.retry_after_s <= 1.0  # one request per second comes back
    assert retry_after_header(refused) == "1"
    assert 2.9 < refused.reset_after_s <= 3.0  # full again after three intervals
    assert decisions[0].retry_after_s == 0 and not decisions[0].degraded
    client = redis.Redis.from_url(gateway_redis_url)
    ttl_ms = client.pttl(rate_limit_key("key_a"))
    assert 2000 < ttl_ms <= 3000  # an idle bucket disappears once full again
    assert rate_limit_key("key_a") == "flywheel:gateway:ratelimit:key_a"


def test_refills_over_time(gateway_redis_url):
    fast = RateLimitPolicy(requests_per_minute=60 * 50, burst=2)  # one every 20 ms

    async def main():
        limiter = RateLimiter.from_url(gateway_redis_url)
        try:
            first = [(await limiter.check("key_b", fast)).allowed for _ in range(3)]
            refused = await limiter.check("key_b", fast)
            await asyncio.sleep(refused.retry_after_s + 0.005)
            after_one = [(await limiter.check("key_b", fast)).allowed for _ in range(2)]
            await asyncio.sleep(0.06)
            after_full = await limiter.check("key_b", fast)
        finally:
            await limiter.aclose()
        return first, refused, after_one, after_full

    first, refused, after_one, after_full = asyncio.run(main())
    assert first == [True, True, False]
    assert 0 < refused.retry_after_s <= 0.02
    assert after_one == [True, False]  # one request's worth came back, not more
    assert after_full.allowed and after_full.remaining == 1  # never more than the burst


def test_replicas_share_one_budget_atomically(gateway_redis_url):
    policy = RateLimitPolicy(requests_per_minute=60, burst=10)

    async def main():
        replicas = [RateLimiter.from_url(gateway_redis_url) for _ in range(2)]
        try:
            decisions = await asyncio.gather(
                *(replicas[i % 2].check("key_shared", policy) for i in range(40))
            )
        finally:
            for limiter in replicas:
                await limiter.aclose()
        return decisions

    decisions = asyncio.run(main())
    assert sum(d.allowed for d in decisions) == 10


def test_keys_are_independent_and_cost_counts(gateway_redis_url):
    policy = RateLimitPolicy(requests_per_minute=60, burst=4)

    async def main():
        limiter = RateLimiter.from_url(gateway_redis_url)
        try:
            big = await limiter.check("key_c", policy, cost=3)  # e.g. n = 3 candidates
            second = await limiter.check("key_c", policy, cost=2)
            other = await limiter.check("key_d", policy)
            huge = await limiter.check("key_e", policy, cost=100)  # capped at the burst
        finally:
            await limiter.aclose()
        return big, second, other, huge

    big, second, other, huge = asyncio.run(main())
    assert big.allowed and big.remaining == 1
    assert not second.allowed and 0.9 < second.retry_after_s <= 1.0
    assert other.allowed and other.remaining == 3
    assert huge.allowed and huge.remaining == 0


def test_policy_overrides_per_key():
    settings = GatewaySettings(rate_limit_requests_per_minute=60, rate_limit_burst=20)
    plain = KeyRecord("key_x", "0" * 64, "x", datetime.now(UTC))
    assert RateLimitPolicy.for_key(settings, None) == RateLimitPolicy(60, 20)
    assert RateLimitPolicy.for_key(settings, plain) == RateLimitPolicy(60, 20)
    special = KeyRecord(
        "key_y", "0" * 64, "y", datetime.now(UTC), rate_limit_requests_per_minute=600
    )
    assert RateLimitPolicy.for_key(settings, special) == RateLimitPolicy(600, 20)
    assert RateLimitPolicy(600, 20).interval_us == 100_000


def test_redis_down_fails_open(caplog):
    caplog.set_level(logging.WARNING, logger="services.inference.gateway.rate_limit")
    errors_before = REGISTRY.get_sample_value("flywheel_gateway_rate_limit_errors_total") or 0

    async def main():
        limiter = RateLimiter.from_url("redis://127.0.0.1:1/0", open_for_s=60)
        try:
            started = time.monotonic()
            decisions = [await limiter.check("key_f", PER_MINUTE_60) for _ in range(5)]
            return decisions, time.monotonic() - started
        finally:
            await limiter.aclose()

    decisions, elapsed = asyncio.run(main())
    assert all(d.allowed and d.degraded for d in decisions)
    assert elapsed < 1.0  # after the first failure Redis is not waited for again
    errors = REGISTRY.get_sample_value("flywheel_gateway_rate_limit_errors_total")
    assert errors == errors_before + 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1


def test_recovers_when_redis_comes_back(tmp_path, caplog):
    """Down, then a Redis starts on that address: the same limiter enforces limits again."""
    caplog.set_level(logging.INFO, logger="services.inference.gateway.rate_limit")
    port = free_port()

    async def check(limiter):
        return await limiter.check("key_g", PER_MINUTE_60)

    async def main():
        limiter = RateLimiter.from_url(f"redis://127.0.0.1:{port}/0", open_for_s=0)
        try:
            down = await check(limiter)
            server = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 10
                while (up := await check(limiter)).degraded:
                    assert time.monotonic() < deadline, "redis-server did not answer"
                    await asyncio.sleep(0.05)
            finally:
                server.terminate()
                server.wait(10)
        finally:
            await limiter.aclose()
        return down, up

    down, up = asyncio.run(main())
    assert down.degraded and down.allowed
    assert not up.degraded and up.allowed and up.remaining == 2
    assert any("answers again" in r.getMessage() for r in caplog.records)
