"""SIGTERM to a stage process, as an executor sends it on a cancel or a lost lease: a running
PPO loop saves a checkpoint after its iteration and the process exits stopped, losing no
finished iteration; with no loop running the process exits at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from services.common.training_runs import OWN_PROCESS_STAGES
from services.rlhf.checkpoint import read_extra
from services.trainer.stage_main import HEAVY_STAGES, STOPPED_EXIT
from tests.rlhf.test_ppo import PROMPTS, make_trainer, small_config

REPO = Path(__file__).resolve().parents[2]

# PPO on the tiny model under stage_main's SIGTERM handling, printing each finished iteration.
_PPO_STAGE = """
import sys
from pathlib import Path
from services.rlhf.loop import StopRequested
from services.trainer.stage_main import STOPPED_EXIT, stop_on_sigterm
from tests.rlhf.test_ppo import PROMPTS, make_trainer, small_config

stop_on_sigterm()
trainer = make_trainer(Path(sys.argv[1]), small_config(), checkpoint_dir=Path(sys.argv[2]))
print("ready", flush=True)
try:
    trainer.train(PROMPTS, 50, progress=False, on_iteration=lambda i, _: print(i, flush=True))
except StopRequested:
    sys.exit(STOPPED_EXIT)
"""


def test_sigterm_mid_ppo_saves_every_finished_iteration(tiny_model_dir, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    stage = subprocess.Popen(
        [sys.executable, "-c", _PPO_STAGE, str(tiny_model_dir), str(checkpoints)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stage.stdout.readline().strip() == "ready"
        finished = [stage.stdout.readline().strip() for _ in range(2)]  # iterations 0 and 1
        stage.send_signal(signal.SIGTERM)  # during iteration 2, or just before it
        finished += [line.strip() for line in stage.stdout if line.strip()]
        assert stage.wait(60) == STOPPED_EXIT
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.wait()
    saved = read_extra(checkpoints / "checkpoint")["saved_at_step"]
    # Every iteration that finished (the one running at SIGTERM included) is in the checkpoint.
    assert finished == [str(i) for i in range(saved)] and saved >= 2

    resumed = make_trainer(tiny_model_dir, small_config(), checkpoint_dir=checkpoints)
    history = resumed.train(PROMPTS, iterations=saved + 1, progress=False)
    assert len(history) == 1 and resumed.iteration == saved + 1


def test_sigterm_with_no_loop_running_exits_at_once(tmp_path):
    script = (
        "import time\n"
        "from services.trainer.stage_main import stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    stage = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert stage.stdout.readline().strip() == "ready"
        started = time.monotonic()
        stage.send_signal(signal.SIGTERM)
        assert stage.wait(30) == STOPPED_EXIT
        assert time.monotonic() - started < 20  # not the minute's sleep (margin for load)
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.wait()


def test_every_stage_the_table_runs_in_its_own_process_has_an_entry_point():
    assert set(HEAVY_STAGES) == OWN_PROCESS_STAGES
