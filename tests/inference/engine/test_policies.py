"""Which decode path a loaded policy gets: the fast Llama step by default, the model's own
forward when the operator turns it off or the CPU cannot pack the weights (the probe the
holder asks); each version gets its own, packed from its weights."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache

from services.inference.engine.policies import PolicyHolder
from services.rlhf import cpu_features
from services.rlhf.llama_decode import LlamaDecodeStep

pytestmark = pytest.mark.cpu_paths
_PACKS_FP32 = cpu_features.onednn_packs(torch.float32)
packs_fp32 = pytest.mark.skipif(
    not _PACKS_FP32, reason=f"oneDNN cannot pack fp32 weights here ({cpu_features.describe()})"
)
cannot_pack_fp32 = pytest.mark.skipif(
    _PACKS_FP32, reason="this CPU packs fp32 weights: the fast step is tested instead"
)


@packs_fp32
def test_a_llama_policy_decodes_through_the_fast_step_packed_per_version(policy_store):
    holder = PolicyHolder(policy_store, device="cpu", precision="fp32")
    holder.reload()
    first = holder.current
    assert isinstance(first.decode_step, LlamaDecodeStep)
    holder.reload("v1")
    second = holder.current
    assert second.version == "v1" and isinstance(second.decode_step, LlamaDecodeStep)
    # v1's step computes v1: its logits differ from v0's for the same input.
    ids = torch.tensor([[5, 6, 7]])
    logits = []
    for policy in (first, second):
        with torch.inference_mode():
            cache = DynamicCache()
            policy.model(input_ids=ids[:, :-1], cache=cache)
            mask = torch.ones((1, 3), dtype=torch.long)
            logits.append(policy.decode_step(ids[:, -1:], torch.tensor([[2]]), mask, cache))
    assert not torch.equal(logits[0], logits[1])


def test_turned_off_the_model_s_own_forward_decodes(policy_store):
    holder = PolicyHolder(policy_store, device="cpu", precision="fp32", fast_decode=False)
    holder.reload()
    assert holder.current.decode_step is None


@cannot_pack_fp32
def test_where_the_cpu_cannot_pack_the_weights_the_model_s_own_forward_decodes(policy_store):
    holder = PolicyHolder(policy_store, device="cpu", precision="fp32")
    holder.reload()
    assert holder.current.decode_step is None
