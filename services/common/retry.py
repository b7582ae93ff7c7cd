"""Waiting out an outage (Redis or a peer service down): one backoff rule and one way to log it.

- :class:`Backoff`: the wait after the n-th consecutive failure is ``initial_s * 2^(n-1)``
  capped at ``max_s``, drawn from ``[jitter, 1]`` times that so that replicas do not retry in
  lockstep; a success starts again from ``initial_s``.
- :class:`Outage`: logs the first failure of an outage and the recovery (with its length),
  not every retry, so a long outage does not flood the log.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float
    max_s: float
    jitter: float = 0.5
    failures: int = 0

    def failed(self) -> float:
        """Count a failure; the wait before the next attempt."""
        self.failures += 1
        return self.delay()

    def delay(self) -> float:
        """The wait after the failures counted so far (0 with none)."""
        if not self.failures:
            return 0.0
        doublings = min(self.failures - 1, 30)  # capped: 2.0 ** 1024 overflows
        base = min(self.max_s, self.initial_s * 2.0**doublings)
        return base * random.uniform(self.jitter, 1.0)

    def succeeded(self) -> None:
        self.failures = 0


@dataclass
class Outage:
    """``failed(error)`` on every failed attempt, ``recovered()`` on every success."""

    log: logging.Logger
    what: str
    since: float | None = field(default=None, init=False)

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, error: object) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s failing (%s); retrying with backoff", self.what, error)

    def recovered(self) -> float | None:
        """Seconds the outage lasted (logged), or None if there was none."""
        if self.since is None:
            return None
        lasted = time.monotonic() - self.since
        self.since = None
        self.log.info("%s recovered after %.1f s", self.what, lasted)
        return lasted
