"""What this CPU can do, asked the way the fast paths need it, in one place.

Two paths depend on the processor: bf16 as the default precision (worth it only where
matmuls have bf16 units: AVX512-BF16 or AMX) and the fast decode step's oneDNN-packed
weights (bf16 packing needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT; fp32 packing needs only
oneDNN). Code and tests both ask here, so a test skips exactly where the code falls back.

``FLYWHEEL_CPU_FEATURES=baseline`` makes every probe answer "not available": the generic
path then runs even on a CPU that has the fast one, which is how ``make test`` exercises
both paths on any machine.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic_settings import BaseSettings, SettingsConfigDict


class CpuFeatureSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    # auto: ask the CPU; baseline: answer "not available" to every probe below.
    cpu_features: Literal["auto", "baseline"] = "auto"


def baseline_forced() -> bool:
    """Whether the environment asks for the generic path whatever the CPU has."""
    # Read at every call, not cached, so a test can change the environment. Callers ask once
    # per model load or per generate call (which packs the weights anyway): microseconds.
    return CpuFeatureSettings().cpu_features == "baseline"


def native_bf16_matmul() -> bool:
    """The CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), where bf16
    matmuls run about twice as fast as fp32 ones."""
    if baseline_forced():
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def onednn_packs(dtype: torch.dtype) -> bool:
    """oneDNN can pack linear weights of ``dtype`` into its blocked layout on this CPU
    (what ``torch.ops.mkldnn._reorder_linear_weight`` needs)."""
    if baseline_forced() or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        # torch's own check before the reorder raises "bf16 path needs the cpu support ...".
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def describe() -> str:
    """One line for logs and test reports: what the probes answer here."""
    if baseline_forced():
        return "baseline (FLYWHEEL_CPU_FEATURES=baseline: every probe answers no)"
    return (
        f"native bf16 matmul: {native_bf16_matmul()}, "
        f"oneDNN packing fp32/bf16: {onednn_packs(torch.float32)}/{onednn_packs(torch.bfloat16)}"
    )
