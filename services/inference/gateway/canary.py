"""Which policy version answers an API key: during a canary, a stable share of the keys get it.

The engine says what it serves in ``/info`` (the canary's version and share, services/inference/
engine/policies.py); the router re-reads that every ``canary_refresh_s`` seconds. A key goes to
the canary when its bucket, a hash of (canary version, key id) mapped into [0, 1), lies below
the share: one key keeps one version for the whole canary (a user sees one model, and their
thumbs are about that model), and each new canary draws its own keys. The engine names the
version that answered every request, and that is what the gateway records.

Engines that report no canary (TGI, vLLM) get no canary routing: every request asks for the
promoted model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import httpx

from services.inference.gateway import metrics

log = logging.getLogger(__name__)


def bucket(key_id: str, version: str) -> float:
    """A key's place in [0, 1) for one canary: uniform over keys, fixed for the pair."""
    digest = hashlib.sha256(f"{version}\0{key_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class EngineCanary:
    version: str
    share: float


class CanaryRouter:
    def __init__(self, engine: httpx.AsyncClient, refresh_s: float) -> None:
        self._engine, self._refresh_s = engine, refresh_s
        self._canary: EngineCanary | None = None
        self._read_at = float("-inf")

    async def close(self) -> None:
        await self._engine.aclose()

    async def version_for(self, key_id: str) -> str | None:
        """The canary's version if this key is in its share, else None (the promoted one)."""
        canary = await self._current()
        if canary is not None and bucket(key_id, canary.version) < canary.share:
            metrics.CANARY_ROUTED.inc()
            return canary.version
        return None

    async def _current(self) -> EngineCanary | None:
        if time.monotonic() - self._read_at >= self._refresh_s:
            # Read first, then stamp: concurrent requests meanwhile use the last answer.
            self._read_at = time.monotonic()
            self._canary = await self._read()
        return self._canary

    async def _read(self) -> EngineCanary | None:
        try:
            info = (await self._engine.get("/info")).raise_for_status().json()
        except (httpx.HTTPError, ValueError) as error:
            # Keep the last answer: a canary stays sticky through an engine hiccup.
            log.warning("could not read the engine's canary (%s); keeping the last", error)
            return self._canary
        version, share = info.get("canary_version"), info.get("canary_share") or 0.0
        if not isinstance(version, str) or not share:
            return None
        return EngineCanary(version, float(share))
