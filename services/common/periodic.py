"""A background thread that runs one small job every few seconds and survives its failures.

Meant for jobs that talk to something that may be down (Redis): a failure is logged once
when an outage starts and once when it ends, not every round, and the thread goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from services.common.retry import Outage

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, interval_s: float, job: Callable[[], object]) -> None:
        self.name, self.interval_s, self.job = name, interval_s, job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._outage = Outage(log, name)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def run_once(self) -> bool:
        """One round now; whether it succeeded."""
        try:
            self.job()
        except Exception as error:
            self._outage.failed(error)
            return False
        self._outage.recovered()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval_s)
