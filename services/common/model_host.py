"""The model version a serving process holds, and switching it: one rule for every server.

The engine and the reward service each give a ``load(version_info)`` that builds their own
kind of loaded model (anything with a ``version``); the host does the rest the same way for
both: one reload at a time, the registry's rule for what to load (``version_to_load``: the
promoted version by default, nothing when it already serves, files verified first), the
swap (readers see the old model or the new one, never half of one; requests holding the old
one finish on it), the serving gauge, and one log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from prometheus_client import Gauge

from services.common.openmp import in_passing_thread
from services.common.registry import ModelRegistry, VersionInfo

log = logging.getLogger(__name__)


class _Versioned(Protocol):
    version: str


Loaded = TypeVar("Loaded", bound=_Versioned)


class ModelHost(Generic[Loaded]):
    def __init__(
        self,
        registry: ModelRegistry,
        role: str,
        load: Callable[[VersionInfo], Loaded],
        serving_gauge: Gauge,
        describe: Callable[[Loaded], str] = lambda _loaded: "",
    ) -> None:
        self.registry, self.role = registry, role
        self._load, self._gauge, self._describe = load, serving_gauge, describe
        self._current: Loaded | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> Loaded | None:
        return self._current

    def reload(self, version: str = "") -> tuple[str, str]:
        """Serve ``version`` (default: the promoted one): (previous, current) version names.
        Registry errors (unknown or corrupt version) propagate; the old version keeps serving."""
        with self._lock:
            previous = self._current.version if self._current else ""
            info = self.registry.version_to_load(self.role, version, serving=previous)
            if info is None:
                return previous, previous
            started = time.perf_counter()
            # Off this thread, so no OpenMP team outlives the load (services/common/openmp.py).
            loaded = in_passing_thread(lambda: self._load(info))
            self._current = loaded
            if previous:
                self._gauge.labels(previous).set(0)
            self._gauge.labels(info.version).set(1)
            details = self._describe(loaded)
            log.info(
                "%s %s serving (was %s), loaded in %.1f s%s",
                self.role,
                info.version,
                previous or "none",
                time.perf_counter() - started,
                f"; {details}" if details else "",
            )
            return previous, info.version

    def drop(self) -> str:
        """Stop holding a model (requests holding it finish on it); the version dropped."""
        with self._lock:
            dropped, self._current = self._current, None
            if dropped is None:
                return ""
            self._gauge.labels(dropped.version).set(0)
            log.info("%s %s no longer served here", self.role, dropped.version)
            return dropped.version
