"""Starting and stopping the stack's processes, detached from the ``flywheel`` command.

Each process gets a session (and so a process group) of its own: it outlives the shell that
ran ``flywheel up``, a Ctrl-C there does not reach it, and ``down`` can signal the whole
group (a service and anything it spawned) at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.cli.stack_state import ProcessRecord, is_running, process_start_ticks

# How long ``down`` waits after SIGKILL for the kernel to remove the process.
_KILL_WAIT_S = 5.0


@dataclass
class Launched:
    """A process this invocation started: the handle tells at once when it exits."""

    record: ProcessRecord
    process: subprocess.Popen
    log_offset: int
    """Size of the log before this start: the error report shows only this run's lines."""


def launch(
    service: str,
    command: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    address: str,
    ports: dict[str, int],
) -> Launched:
    """Start ``command`` detached, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    with open(log_path, "ab") as log:
        offset = log.tell()
        when = started_at.isoformat(timespec="seconds")
        log.write(f"\n=== flywheel up {when}: {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    record = ProcessRecord(
        service=service,
        pid=process.pid,
        started_at=started_at.isoformat(timespec="seconds"),
        proc_start=process_start_ticks(process.pid),
        command=command,
        address=address,
        log=str(log_path),
        ports=ports,
    )
    return Launched(record, process, offset)


def stop(record: ProcessRecord, timeout_s: float) -> str:
    """SIGTERM the process group, wait up to ``timeout_s`` for a graceful drain, then SIGKILL.

    Returns what happened, for the report: "stopped", "killed" or "was not running".
    """
    if not is_running(record):
        return "was not running"
    _signal_group(record.pid, signal.SIGTERM)
    if _wait_gone(record, timeout_s):
        return "stopped"
    _signal_group(record.pid, signal.SIGKILL)
    _wait_gone(record, _KILL_WAIT_S)
    return f"killed (still running {timeout_s:g} s after SIGTERM)"


def _signal_group(pid: int, sig: int) -> None:
    # The service leads its own group (start_new_session), so its pid is the group id.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _wait_gone(record: ProcessRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while is_running(record):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def uptime(record: ProcessRecord) -> str:
    """Human uptime since the recorded start: 42s, 5m03s, 2h14m, 3d04h."""
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(record.started_at)).total_seconds())
    seconds = max(seconds, 0)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days}d{hour:02d}h"
    if hours:
        return f"{hours}h{minute:02d}m"
    if minutes:
        return f"{minutes}m{sec:02d}s"
    return f"{sec}s"


def log_tail(path: Path, lines: int = 20, offset: int = 0) -> list[str]:
    """The last ``lines`` lines of the log from ``offset`` on (this run's output)."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            return [line.decode(errors="replace").rstrip("\n") for line in deque(log, maxlen=lines)]
    except OSError:
        return []
