"""What ``flywheel up`` started: one JSON state file per process under ``<data_dir>/run/``.

The files are how ``down`` and ``status`` (later invocations, other shells) find the
processes. A pid alone is not an identity: after a reboot or a crash the number may belong
to another program, and ``down`` must never signal that one. So each record also keeps the
kernel's start time of the process (``/proc/<pid>/stat``, in clock ticks since boot), and a
process counts as ours only while both match.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.atomic_files import write_atomically


@dataclass(frozen=True)
class ProcessRecord:
    """One process started by ``flywheel up``."""

    service: str
    pid: int
    started_at: str
    """Wall-clock start, ISO 8601 UTC: for people and for the uptime column."""
    proc_start: int | None
    """Kernel start time (clock ticks since boot); None where /proc is not available."""
    command: list[str]
    address: str
    log: str
    ports: dict[str, int] = field(default_factory=dict)


def state_path(run_dir: Path, service: str) -> Path:
    return run_dir / f"{service}.json"


def write_record(run_dir: Path, record: ProcessRecord) -> None:
    """Write atomically (temp file, fsync, rename): a reader never sees half a record, and a
    crash leaves the old file or the new one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(run_dir, record.service)
    # 0600: the records name commands and environment of the user's processes.
    write_atomically(path, json.dumps(asdict(record), indent=2) + "\n", mode=0o600)


def read_record(run_dir: Path, service: str) -> ProcessRecord | None:
    """The service's record; None if there is none or it cannot be read (a hand-edited or
    truncated file is treated like a stale one: the next ``up`` replaces it)."""
    try:
        data = json.loads(state_path(run_dir, service).read_text(encoding="utf-8"))
        return ProcessRecord(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None


def remove_record(run_dir: Path, service: str) -> None:
    state_path(run_dir, service).unlink(missing_ok=True)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) from /proc/<pid>/stat; None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def process_start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (``up`` run in-process), so it
    does not linger as a zombie that looks alive to ``kill(pid, 0)``."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_running(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (and is the same process, not a reused pid)."""
    _reap(record.pid)
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(record.pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return record.proc_start is None or stat[1] == record.proc_start
    try:  # no /proc (not Linux): the pid is all there is
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
