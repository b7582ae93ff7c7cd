"""Gateway overhead: the same chat request straight to the engine and through the gateway.

Run (Redis on 6399 from `tools/test-services.sh up`):
    .venv/bin/python -m benchmarks.gateway_overhead [--store data/models] [--requests 200]

The local stack (`flywheel up`) runs in a temporary data folder, each service its own
process, with the store's policy/v0 (`flywheel models init` makes it). The client sends
short chat requests (greedy, 1 new token, so the engine's own time is small and the
gateway's share shows) one at a time, alternating between the engine's
`/v1/chat/completions` and the gateway's, so both see the same machine state. The gateway
adds: API key check, a Redis rate-limit round trip, a second HTTP hop through the TGI
client, minting ids and an fsync'd spool write. Prints p50/p90 of each and the p50
difference (target: under 5 ms).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PORTS = {
    "FLYWHEEL_GATEWAY_HTTP_PORT": 18100,
    "FLYWHEEL_ENGINE_HTTP_PORT": 18180,
    "FLYWHEEL_ENGINE_ADMIN_GRPC_PORT": 51153,
    "FLYWHEEL_FEEDBACK_HTTP_PORT": 18101,
    "FLYWHEEL_FEEDBACK_GRPC_PORT": 51151,
    "FLYWHEEL_REWARD_GRPC_PORT": 51152,
    "FLYWHEEL_REWARD_METRICS_PORT": 19152,
}


def flywheel(args: list[str], env: dict) -> None:
    subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, check=True)


def timed(client: httpx.Client, url: str, headers: dict, body: dict) -> float:
    started = time.perf_counter()
    response = client.post(url, json=body, headers=headers)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("data/models"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6399/8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(args.store, data / "models")
        env = {
            **os.environ,
            **{k: str(v) for k, v in PORTS.items()},
            "FLYWHEEL_DATA_DIR": str(data),
            "FLYWHEEL_REDIS_URL": args.redis_url,
            # The client sends hundreds of requests from one key: no rate limit refusals.
            "FLYWHEEL_GATEWAY_RATE_LIMIT_REQUESTS_PER_MINUTE": "100000",
            "FLYWHEEL_GATEWAY_RATE_LIMIT_BURST": "100000",
        }
        flywheel(["up", "--only", "feedback", "engine", "gateway"], env)
        try:
            key = (data / "dev-api-key").read_text().strip()
            body = {
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
                "temperature": 0,
            }
            direct_url = (
                f"http://127.0.0.1:{PORTS['FLYWHEEL_ENGINE_HTTP_PORT']}/v1/chat/completions"
            )
            gateway_url = (
                f"http://127.0.0.1:{PORTS['FLYWHEEL_GATEWAY_HTTP_PORT']}/v1/chat/completions"
            )
            auth = {"Authorization": f"Bearer {key}"}
            direct, through = [], []
            with httpx.Client(timeout=30) as client:
                for _ in range(10):  # warm-up, not counted
                    timed(client, direct_url, {}, body)
                    timed(client, gateway_url, auth, body)
                for n in range(args.requests):
                    direct.append(timed(client, direct_url, {}, body))
                    through.append(timed(client, gateway_url, auth, body))
                    if (n + 1) % 50 == 0:
                        print(f"{n + 1}/{args.requests} pairs", flush=True)
        finally:
            flywheel(["down"], env)
    for name, values in (("engine directly", direct), ("through the gateway", through)):
        q = statistics.quantiles(values, n=10)
        print(
            f"{name:20s} p50 {statistics.median(values) * 1e3:6.1f} ms   p90 {q[8] * 1e3:6.1f} ms"
        )
    added = (statistics.median(through) - statistics.median(direct)) * 1e3
    print(f"gateway adds {added:.1f} ms at p50 (target: under 5 ms)")


if __name__ == "__main__":
    main()
