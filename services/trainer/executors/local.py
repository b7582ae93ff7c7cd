"""The local executor: each heavy stage in a fresh Python subprocess of the train worker.

A new interpreter (not a fork) per stage: a forked child of a process that touched CUDA
cannot use CUDA, and a process that trained a model holds on to its memory; a subprocess
returns all of it when it exits. The child dies with its parent (PR_SET_PDEATHSIG), so a
SIGKILLed worker leaves no stage training on behind the new owner's back.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from threading import Thread

from services.trainer.executors.base import StageExit, StageJob

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the worker that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalExecutor:
    def __init__(
        self,
        poll_s: float = 1.0,
        stop_grace_s: float = 30.0,
        log_tail_lines: int = 50,
    ) -> None:
        self.poll_s = poll_s
        self.stop_grace_s = stop_grace_s
        self.log_tail_lines = log_tail_lines

    def run(self, job: StageJob, should_stop: Callable[[], bool]) -> StageExit:
        job.work_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable if c == "python" else c for c in job.command]
        child = subprocess.Popen(
            command,
            env={**os.environ, **job.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        tail: deque[str] = deque(maxlen=self.log_tail_lines)
        # The stage's output goes to the worker's log (progress bars, per-iteration lines) and
        # its last lines to the run record.
        reader = Thread(target=self._pump, args=(child, tail, job.stage), daemon=True)
        reader.start()
        started = time.monotonic()
        stopped = timed_out = False
        limit = job.time_limit_s
        while child.poll() is None:
            timed_out = limit is not None and time.monotonic() - started > limit
            stopped = not timed_out and should_stop()
            if timed_out or stopped:
                if timed_out:
                    tail.append(f"stopped: over the time limit of {limit:g} s")
                self._stop(child)
                break
            time.sleep(self.poll_s)
        reader.join(5)
        return StageExit(child.returncode, "".join(tail)[-8000:], stopped, timed_out)

    def _stop(self, child: subprocess.Popen) -> None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    @staticmethod
    def _pump(child: subprocess.Popen, tail: deque[str], stage: str) -> None:
        for line in child.stdout:
            tail.append(line)
            log.info("[%s] %s", stage, line.rstrip())
