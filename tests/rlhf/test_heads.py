import torch

from services.rlhf.heads import ScalarHeadModel


def test_reward_is_read_at_the_last_real_token_whatever_the_padding(tiny_model_dir):
    model = ScalarHeadModel.from_pretrained(tiny_model_dir).eval()
    seq = torch.tensor([[11, 12, 13, 14]])
    with torch.no_grad():
        alone = model.rewards(seq, torch.ones_like(seq))
        right = model.rewards(
            torch.tensor([[11, 12, 13, 14, 0, 0]]), torch.tensor([[1] * 4 + [0] * 2])
        )
        left = model.rewards(
            torch.tensor([[0, 0, 11, 12, 13, 14]]), torch.tensor([[0] * 2 + [1] * 4])
        )
        values = model.values(seq, torch.ones_like(seq))
    assert torch.allclose(alone, right, atol=1e-5)
    assert torch.allclose(alone, left, atol=1e-4)
    assert torch.allclose(values[:, -1], alone)


def test_save_and_load_keeps_scores_and_bias_shift(tiny_model_dir, tmp_path):
    model = ScalarHeadModel.from_pretrained(tiny_model_dir).eval()
    assert not ScalarHeadModel.has_head(tiny_model_dir)
    model.shift_bias(-0.75)
    model.save_pretrained(tmp_path)
    loaded = ScalarHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(model.rewards(ids, mask), loaded.rewards(ids, mask), atol=1e-6)
    assert loaded.head.bias.item() == -0.75
    assert ScalarHeadModel.has_head(tmp_path)


def test_backbone_comes_from_the_policy_checkpoint(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = ScalarHeadModel.from_pretrained(tiny_model_dir)
    assert torch.equal(model.backbone.embed_tokens.weight, policy.model.embed_tokens.weight)
    assert torch.equal(
        model.backbone.layers[1].mlp.up_proj.weight, policy.model.layers[1].mlp.up_proj.weight
    )


def test_head_stays_fp32_under_bf16_autocast(tiny_model_dir):
    model = ScalarHeadModel.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rewards = model.rewards(ids, torch.ones_like(ids))
    with torch.no_grad():
        exact = model.rewards(ids, torch.ones_like(ids))
    assert rewards.dtype == torch.float32
    assert torch.allclose(rewards, exact, atol=0.05)  # bf16 backbone, fp32 head
