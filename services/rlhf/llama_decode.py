"""A fast decode step for Llama-family models on CPU: one new token for every row of a batch.

On a 135M model a decode step costs little arithmetic; what it costs is (1) the general
matrix-vector kernels reading every weight once per step and (2) some 700 small operator
calls with transformers' bookkeeping around them (mask building, attention dispatch, cache
plumbing). This step cuts both, computing the same model:

- the projections use weights packed once into oneDNN's blocked layout (the kernels
  transformers' linear layers would use, minus the per-call repacking), and the query, key
  and value projections (and gate and up) are fused into one matrix each: fewer, larger
  calls that read the weights at close to memory speed;
- the rest is written out with the fewest operators: one fused RMSNorm, rotary embeddings
  computed once per step for every layer, grouped-query attention on the key/value heads
  without repeating them, no mask when no row is padded.

Same arithmetic as the model's own forward in the same dtype (RMSNorm in fp32, rotary in
the model dtype, the same attention kernel); only the matrix kernels' blocking differs, so
logits agree to rounding and greedy tokens are equal (tests/rlhf/test_llama_decode.py
checks the tokens against ``generate``). The cache is whatever ``Cache`` the prefill filled:
each layer's ``update`` appends the step's key and value and returns the whole history.

Other architectures, devices other than the CPU, or a CPU where oneDNN cannot pack the
model's dtype (bf16 without AVX-512 BW/VL/DQ; anything under
``FLYWHEEL_CPU_FEATURES=baseline``, see ``cpu_features``) get ``None`` from ``build``;
callers fall back to the model's own forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from services.rlhf import cpu_features

log = logging.getLogger(__name__)

_PACKABLE = (torch.float32, torch.bfloat16)


class PackedLinear:
    """``x @ cat(weights).T`` with the concatenated weight packed once for oneDNN."""

    def __init__(self, weights: Sequence[torch.Tensor]) -> None:
        fused = torch.cat(list(weights)) if len(weights) > 1 else weights[0]
        self._packed = torch.ops.mkldnn._reorder_linear_weight(fused.detach().contiguous(), None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, None, "none", [], "")


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: PackedLinear
    out: PackedLinear
    post_norm: torch.Tensor
    gate_up: PackedLinear
    down: PackedLinear


class LlamaDecodeStep:
    """Call with the last token and position of each row, the attention mask over the cache
    plus the new column (1 where a row has a real token), and the cache: the next-token
    logits of each row in fp32, (rows, vocab)."""

    def __init__(self, model: PreTrainedModel) -> None:
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.hidden = config.hidden_size
        self.scaling = self.head_dim**-0.5
        self.dtype = model.dtype
        base = model.model
        self.embed = base.embed_tokens.weight
        self.inv_freq = base.rotary_emb.inv_freq.float()
        self.final_norm = base.norm.weight
        self.lm_head = PackedLinear([model.lm_head.weight])
        self.act: Callable[[torch.Tensor], torch.Tensor] = base.layers[0].mlp.act_fn
        self.layers = [
            _Layer(
                input_norm=layer.input_layernorm.weight,
                qkv=PackedLinear(
                    [
                        layer.self_attn.q_proj.weight,
                        layer.self_attn.k_proj.weight,
                        layer.self_attn.v_proj.weight,
                    ]
                ),
                out=PackedLinear([layer.self_attn.o_proj.weight]),
                post_norm=layer.post_attention_layernorm.weight,
                gate_up=PackedLinear([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
                down=PackedLinear([layer.mlp.down_proj.weight]),
            )
            for layer in base.layers
        ]

    @torch.inference_mode()
    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: Cache,
    ) -> torch.Tensor:
        rows = tokens.shape[0]
        kv, group, dim = self.kv_heads, self.heads // self.kv_heads, self.head_dim
        x = F.embedding(tokens.reshape(rows), self.embed)
        cos, sin = self._rotary(positions.reshape(rows))
        # A padded row must not attend its padding; with none padded the kernel needs no mask.
        attend = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        q_size, kv_size = self.heads * dim, kv * dim
        query_shape = (rows, self.heads, 1, dim) if attend is None else (rows, kv, group, dim)
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.input_norm)
            q, k, v = layer.qkv(h).split((q_size, kv_size, kv_size), dim=-1)
            # The attention call transformers makes, so the kernel and its rounding are the
            # same: without a mask, grouped-query attention in the kernel; with one, each
            # query head grouped under its key/value head (its pack_gqa), as a view here.
            q = _rotate(q.view(query_shape), cos, sin)
            k = _rotate(k.view(rows, kv, 1, dim), cos, sin)
            keys, values = cache.layers[index].update(k, v.reshape(rows, kv, 1, dim))
            attended = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=attend, scale=self.scaling, enable_gqa=attend is None
            )
            x = x + layer.out(attended.reshape(rows, q_size))
            gate, up = layer.gate_up(self._norm(x, layer.post_norm)).chunk(2, dim=-1)
            x = x + layer.down(self.act(gate) * up)
        return self.lm_head(self._norm(x, self.final_norm)).float()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # As LlamaRMSNorm: normalised in fp32, cast back, then scaled in the model dtype.
        return weight * torch.rms_norm(x.float(), (self.hidden,), None, self.eps).to(x.dtype)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # As LlamaRotaryEmbedding (default rope): angles in fp32, cos/sin cast to the dtype.
        freqs = positions[:, None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        shape = (positions.shape[0], 1, 1, angles.shape[-1])
        return angles.cos().to(self.dtype).view(shape), angles.sin().to(self.dtype).view(shape)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def build(model: PreTrainedModel) -> LlamaDecodeStep | None:
    """The fast step for ``model``, or None where it does not apply (then use the model's
    own forward): only plain Llama (no biases, default rope, SiLU) on a CPU with oneDNN."""
    if not _supported(model):
        return None
    try:
        return LlamaDecodeStep(model)
    except (RuntimeError, AttributeError) as exc:  # an op missing from this torch build
        log.warning("fast decode step unavailable: %s", exc)
        return None


def _supported(model: PreTrainedModel) -> bool:
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    rope_type = (rope or {}).get("rope_type", "default")
    return (
        config.model_type == "llama"
        and model.device.type == "cpu"
        and model.dtype in _PACKABLE
        and cpu_features.onednn_packs(model.dtype)
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and rope_type == "default"
        and getattr(config, "hidden_act", "silu") == "silu"
    )
