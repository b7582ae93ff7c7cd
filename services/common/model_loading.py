"""Load a registered causal LM (model + tokenizer) for a version, on CPU or CUDA.

Every service and the trainer load models through here, so a version written by
the trainer loads the same way in the engine, the reward service and the tests.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from services.common.registry import ModelRegistry, VersionInfo
from services.rlhf import cpu_features

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when there is a GPU, else the CPU; anything else is taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} asked for, but torch sees no CUDA device")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 halves memory and runs on tensor cores on GPUs; CPU matmuls are fastest in fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware (GPUs; CPUs with AVX512-BF16
    or AMX), where bf16 matmuls run about twice as fast as fp32 ones."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_features.native_bf16_matmul()


def resolve_precision(requested: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for a precision setting of ``auto``, ``fp32`` or ``bf16``."""
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {requested!r}")
    if requested == "auto":
        return "bf16" if has_native_bf16(device) else "fp32"
    return requested


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        # Batched generation and scoring need a pad token; end-of-turn is never attended.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: Path, device: str = "auto", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (in eval mode) and tokenizer from a folder written by ``save_pretrained``."""
    target = pick_device(device)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or default_dtype(target))
    model.to(target).eval()
    tokenizer = load_tokenizer(path)
    log.info(
        "model loaded",
        extra={"path": str(path), "device": str(target), "seconds": time.perf_counter() - started},
    )
    return model, tokenizer


def load_version(
    registry: ModelRegistry,
    ref: str,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> tuple[VersionInfo, PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve ``policy/v3`` or ``policy`` (the promoted one), check its files, load it."""
    info = registry.resolve(ref)
    if verify:
        registry.verify(info.manifest.role, info.version)
    model, tokenizer = load_causal_lm(info.path, device=device, dtype=dtype)
    return info, model, tokenizer


def save_to_registry(
    registry: ModelRegistry,
    role: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    **manifest_fields,
) -> VersionInfo:
    """Register ``model`` and ``tokenizer`` as a new candidate version of ``role``."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return registry.create_version(role, write, **manifest_fields)
