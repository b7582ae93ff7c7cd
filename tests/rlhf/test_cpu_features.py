"""The CPU probes answer what torch finds on this CPU, and ``FLYWHEEL_CPU_FEATURES=baseline``
turns every one of them off (how ``make test`` runs the generic paths on any machine)."""

from __future__ import annotations

import pydantic
import pytest
import torch

from services.rlhf import cpu_features

pytestmark = pytest.mark.cpu_paths


def test_auto_asks_torch_about_this_cpu(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_CPU_FEATURES", "auto")
    assert cpu_features.native_bf16_matmul() == (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )
    assert cpu_features.onednn_packs(torch.float32) == torch.backends.mkldnn.is_available()
    assert cpu_features.onednn_packs(torch.bfloat16) == bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    assert cpu_features.onednn_packs(torch.float16) is False


def test_baseline_answers_no_to_every_probe(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_CPU_FEATURES", "baseline")
    assert cpu_features.native_bf16_matmul() is False
    assert cpu_features.onednn_packs(torch.float32) is False
    assert cpu_features.onednn_packs(torch.bfloat16) is False
    assert "baseline" in cpu_features.describe()


def test_a_misspelt_setting_is_refused_not_ignored(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_CPU_FEATURES", "basline")
    with pytest.raises(pydantic.ValidationError, match="baseline"):
        cpu_features.baseline_forced()
