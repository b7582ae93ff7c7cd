"""`make demo QUICK=1` end to end: every part as a real process (Redis, feedback, reward,
engine, gateway, the trainer's workers and beat), the personas as API clients, the tiny model.
The run must end with a new promoted policy serving and a report with its plots, the
labelers' agreement and the alignment-tax table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.registry import ModelRegistry
from services.common.training_runs import RunSummary
from services.simulator import demo
from tests.harness import STACK_PORT_VARIABLES, free_ports, redis_db_url

REPO = Path(__file__).resolve().parents[2]


# The whole demo as processes (~1.5 min here, twice that on a slow CPU): the slow suite.
# The flywheel's own turn (comparisons -> trained, gated, promoted, served, rolled back) stays
# in the default suite: tests/trainer/test_flywheel.py.
@pytest.mark.slow
def test_the_quick_demo_turns_the_flywheel_and_writes_its_report(tmp_path, redis_url):
    ports = dict(
        zip(STACK_PORT_VARIABLES, map(str, free_ports(len(STACK_PORT_VARIABLES))), strict=True)
    )
    data_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update(
        ports,
        FLYWHEEL_REDIS_URL=redis_db_url(redis_url, 10),
        FLYWHEEL_DEMO_DATA_DIR=str(data_dir),
        FLYWHEEL_DEMO_GATEWAY_URL=f"http://127.0.0.1:{ports['FLYWHEEL_GATEWAY_HTTP_PORT']}",
        FLYWHEEL_DEMO_FEEDBACK_URL=f"http://127.0.0.1:{ports['FLYWHEEL_FEEDBACK_HTTP_PORT']}",
    )
    result = subprocess.run(
        [sys.executable, "-m", "services.simulator.demo", "--quick", "--ablation"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "round 1: succeeded (passed); serving v1" in result.stdout

    registry = ModelRegistry(data_dir / "stack" / "models")
    assert registry.promoted("policy").version == "v1"
    assert registry.promoted("reward").version == "v0"
    (report,) = (data_dir / "reports").glob("*/report.md")
    text = report.read_text()
    assert "| 1 |" in text and "succeeded" in text and "win rate vs v0" in text
    assert "with the held-out judges" in text and "the spammer with the judges" in text
    # The measure's scale: the noise floor and the ceiling beside the final policy, all judged
    # on 10 prompts x 2 answers x 3 judges.
    assert "## The measure's scale" in text and "10 prompts, 60 judgements" in text
    assert "| noise floor: v0 against v0 (other seeds) | " in text
    assert "| re-weighting ceiling: v0's best sample by the judges' utility | 0." in text
    # The ablation: v0, the trainer's PPO-ptx policy and the same run without ptx, each with
    # a general-text perplexity, the trained two with a win rate against v0.
    assert (
        "| PPO-ptx | v1 |" in text and "| PPO | (ablation) |" in text and "| v0 | v0 | - |" in text
    )
    for plot in ("win_rate_and_kl.png", "ppo.png", "rm_accuracy.png"):
        assert (report.parent / plot).stat().st_size > 5000
    # Everything the demo started is stopped again.
    assert not list((data_dir / "stack" / "run").glob("*.json"))


def test_a_run_stopped_at_its_snapshot_gets_more_traffic_any_other_ending_does_not():
    def run(status: str, reason: str) -> dict:  # as `flywheel.trainer.status` answers
        return RunSummary("run_1", status, "120 new pairs", reason, None, None, False).to_json()

    assert demo._waits_for_comparisons(run("waiting", "snapshot: 2 held-out groups < 3"))
    assert not demo._waits_for_comparisons(run("rejected", "rm_gate: 0.4"))
    assert not demo._waits_for_comparisons(run("succeeded", ""))
