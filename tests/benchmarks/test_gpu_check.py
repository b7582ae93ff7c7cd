"""benchmarks/gpu_check.py: its CPU quick mode end to end (`make test-slow`), and the clear
refusal of ``--device cuda`` where torch sees no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@no_gpu
def test_cuda_without_a_gpu_exits_non_zero_with_a_clear_message(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = gpu_check("--device", "cuda", "--out", str(out), timeout=60)
    assert result.returncode == 2
    assert "--device cuda asked for" in result.stderr
    assert "sees no CUDA device" in result.stderr
    assert not out.exists()


@no_gpu
def test_the_device_check_comes_before_any_model_or_heavy_import():
    code = (
        "import sys\n"
        "from benchmarks.gpu_check import main\n"
        "rc = main(['--device', 'cuda:0'])\n"
        "print(sorted(m for m in ('transformers', 'services.rlhf') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_cpu_run_measures_all_three_parts(real_store, tmp_path):
    out = tmp_path / "gpu_check.json"
    result = gpu_check(
        *("--device", "cpu", "--dtype", "float32", "--quick"),
        *("--store", str(real_store), "--out", str(out)),
        timeout=840,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["device"], report["dtype"], report["quick"]) == ("cpu", "float32", True)

    serving = report["serving"]
    assert (serving["engine_device"], serving["engine_precision"]) == ("cpu", "fp32")
    assert [level["concurrency"] for level in serving["levels"]] == [1, 4]
    for level in serving["levels"]:
        assert level["tokens"] == level["requests"] * serving["max_new_tokens"]  # ignore_eos
        assert level["tokens_per_s"] > 0
        assert level["ttft_p50_s"] > 0

    rm = report["reward_model"]
    assert rm["sequences_per_step"] == 4 * rm["prompts_per_step"]
    assert rm["seconds_per_step"] > 0
    assert rm["sequences_per_s"] > 0

    ppo = report["ppo"]
    assert ppo["seconds"] > 0
    assert ppo["episodes_per_s"] > 0

    assert "tokens/s" in result.stdout and "episodes/s" in result.stdout  # the table
