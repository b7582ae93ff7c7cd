"""The life cycle every service process shares: parts started in order, stopped in reverse.

A service is a list of :class:`Part` s (an HTTP server thread, a gRPC server, a scheduler,
"load the model", "report ready"...). :class:`ServiceProcess` starts them in order; if one
fails, those already started are stopped again, newest first, and the error propagates. It
stops them in reverse order (each within its own deadline; one that fails to stop is logged
and the rest still stop), and it is alive while every part is. ``serve_until_signal`` is the
one main loop: start, run until SIGTERM/SIGINT or until a part dies, stop; ``run_service`` is
what every ``python -m services.<name>`` does around it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.logging_setup import configure_logging
from services.common.metrics import set_build_info, start_metrics_server
from services.common.settings import ServiceSettings

log = logging.getLogger(__name__)


def _nothing() -> None:
    return None


def _always() -> bool:
    return True


@dataclass
class Part:
    """One piece of a service's life cycle: what starting it does, what stopping it does (its
    own deadline included), and how to tell it still runs."""

    name: str
    start: Callable[[], object] = _nothing
    stop: Callable[[], object] = _nothing
    alive: Callable[[], bool] = _always


@dataclass
class ServiceProcess:
    name: str
    parts: list[Part]
    _started: list[Part] = field(default_factory=list, init=False)

    def start(self) -> None:
        for part in self.parts:
            try:
                part.start()
            except Exception:
                log.error("%s: starting %s failed; stopping what started", self.name, part.name)
                self.stop()
                raise
            self._started.append(part)

    def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except Exception:
                log.exception("%s: stopping %s failed; stopping the rest", self.name, part.name)

    @property
    def alive(self) -> bool:
        return all(part.alive() for part in self._started)

    def dead_parts(self) -> list[str]:
        return [part.name for part in self._started if not part.alive()]

    def serve_until_signal(self, poll_s: float = 0.5) -> None:
        """Start, run until SIGTERM/SIGINT or until a part dies (an orchestrator then restarts
        the process), then stop."""
        stopping = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda _signum, _frame: stopping.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start()
            while not stopping.wait(poll_s):
                if not self.alive:
                    log.error("%s: %s exited unexpectedly; stopping", self.name, self.dead_parts())
                    break
            self.stop()
            log.info("%s stopped", self.name)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_service(
    name: str,
    settings: ServiceSettings,
    build: Callable[[], ServiceProcess],
    metrics_address: tuple[str, int] | None = None,
) -> int:
    """A service's main: logging and build info first (so building the process logs in the
    service's format), then build its process and serve it until a signal; the exit status.
    ``metrics_address`` serves /metrics on a port of its own, for a process with no HTTP app."""
    configure_logging(name, settings.log_level, settings.log_format)
    set_build_info(name)
    if metrics_address is not None:
        start_metrics_server(metrics_address[1], metrics_address[0])
    build().serve_until_signal()
    return 0
