"""The local executor with real subprocesses: exit codes and log tails, stopping (SIGTERM, then
SIGKILL), the time limit, and a stage that dies with the worker that started it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.trainer.executors.base import StageJob
from services.trainer.executors.local import LocalExecutor
from tests.harness import wait_for

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")


def python_job(work_dir: Path, code: str, **env: str) -> StageJob:
    return StageJob("run_test", "ppo", ["python", "-c", textwrap.dedent(code)], work_dir, env)


class StopOnceExists:
    """A ``should_stop`` that says yes from the moment ``path`` exists (the stage wrote it,
    so it is running) and remembers when it first did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.asked_at: float | None = None

    def __call__(self) -> bool:
        if self.asked_at is None and self.path.exists():
            self.asked_at = time.monotonic()
        return self.asked_at is not None


def gone(pid: int) -> bool:
    """The process ended: no such pid, or a zombie nobody here reaps (a container's init may
    not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] in ("Z", "X")


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip(), timeout=10, what=str(path))
    return int(path.read_text())


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_failing_stage_reports_its_exit_code_and_last_lines(tmp_path):
    job = python_job(tmp_path / "work", "print('hi'); import sys; sys.exit(3)")
    outcome = LocalExecutor(poll_s=0.05).run(job, lambda: False)
    assert outcome.exit_code == 3
    assert "hi" in outcome.log_tail
    assert outcome.stopped is False and outcome.succeeded is False


def test_a_stage_that_exits_0_succeeded_in_its_work_dir_with_its_env(tmp_path):
    work = tmp_path / "runs" / "run_test" / "ppo"
    job = python_job(
        work,
        """
        import os, sys
        print("stage", os.environ["FLYWHEEL_STAGE_MARK"])
        print("warned", file=sys.stderr)
        """,
        FLYWHEEL_STAGE_MARK="marked",
    )
    outcome = LocalExecutor(poll_s=0.05).run(job, lambda: False)
    assert outcome.exit_code == 0 and outcome.succeeded and not outcome.stopped
    assert "stage marked" in outcome.log_tail  # the job's env reached the child
    assert "warned" in outcome.log_tail  # stderr is in the tail too
    assert work.is_dir()


def test_the_log_tail_keeps_the_last_lines(tmp_path):
    job = python_job(tmp_path / "w", "for i in range(20): print(f'line {i}')")
    outcome = LocalExecutor(poll_s=0.05, log_tail_lines=3).run(job, lambda: False)
    assert outcome.log_tail == "line 17\nline 18\nline 19\n"


def test_should_stop_stops_the_stage_with_sigterm(tmp_path):
    work = tmp_path / "w"
    pid_file = work / "child.pid"
    job = python_job(
        work,
        f"""
        import os, time
        # Written whole, then renamed: the test never reads a half-written pid.
        open({str(pid_file) + ".tmp"!r}, "w").write(str(os.getpid()))
        os.replace({str(pid_file) + ".tmp"!r}, {str(pid_file)!r})
        time.sleep(60)
        """,
    )
    # Stop once the stage is really running (its pid is on disk), however slow the start.
    should_stop = StopOnceExists(pid_file)
    outcome = LocalExecutor(poll_s=0.05, stop_grace_s=5).run(job, should_stop)
    stopped_after = time.monotonic() - should_stop.asked_at
    assert outcome.stopped is True and outcome.succeeded is False
    assert outcome.exit_code == -signal.SIGTERM
    # SIGTERM ended it, not the grace period's SIGKILL nor the stage's own 60 s.
    assert stopped_after < 5
    assert gone(int(pid_file.read_text()))


def test_a_stage_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    work = tmp_path / "w"
    ready = work / "ignoring"
    job = python_job(
        work,
        f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(work / "child.pid")!r}, "w").write(str(os.getpid()))
        open({str(ready)!r}, "w").close()
        time.sleep(60)
        """,
    )
    should_stop = StopOnceExists(ready)
    outcome = LocalExecutor(poll_s=0.05, stop_grace_s=0.5).run(job, should_stop)
    took = time.monotonic() - should_stop.asked_at
    assert outcome.stopped is True
    assert outcome.exit_code == -signal.SIGKILL
    assert 0.5 <= took < 5
    assert gone(int((work / "child.pid").read_text()))


def test_the_time_limit_stops_a_long_stage_and_says_so(tmp_path):
    job = python_job(tmp_path / "w", "import time; print('training', flush=True); time.sleep(60)")
    job = dataclasses.replace(job, time_limit_s=0.5)
    started = time.monotonic()
    outcome = LocalExecutor(poll_s=0.05, stop_grace_s=5).run(job, lambda: False)
    assert 0.5 <= time.monotonic() - started < 5
    assert outcome.timed_out is True and outcome.stopped is False and not outcome.succeeded
    assert "training" in outcome.log_tail
    assert "stopped: over the time limit of 0.5 s" in outcome.log_tail


PARENT = """
import sys
from pathlib import Path

from services.trainer.executors.base import StageJob
from services.trainer.executors.local import LocalExecutor

work = Path(sys.argv[1])
child = (
    "import os, pathlib, time; "
    f"pathlib.Path({str(work / 'child.pid')!r}).write_text(str(os.getpid())); "
    "time.sleep(120)"
)
job = StageJob("run_test", "ppo", ["python", "-c", child], work)
LocalExecutor(poll_s=0.05).run(job, lambda: False)
"""


def test_the_stage_dies_with_the_worker_that_started_it(tmp_path):
    work = tmp_path / "w"
    script = tmp_path / "worker.py"
    script.write_text(PARENT)
    worker = subprocess.Popen(
        [sys.executable, str(script), str(work)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    child_pid = None
    try:
        child_pid = read_pid(work / "child.pid")
        assert not gone(child_pid)
        worker.kill()  # SIGKILL: the worker gets no chance to stop its stage
        worker.wait(10)
        wait_for(lambda: gone(child_pid), timeout=5, what="the stage to die with its worker")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        if child_pid is not None:
            kill_quietly(child_pid)
