import pytest
import torch

from services.common.model_loading import (
    has_native_bf16,
    load_version,
    pick_device,
    resolve_precision,
    save_to_registry,
)
from services.common.registry import CorruptVersionError


def test_promoted_policy_loads_and_chats(model_store):
    info, model, tokenizer = load_version(model_store, "policy", device="cpu")

    assert info.id == "policy/v0"
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert not model.training
    assert tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 5 or out[0, -1] == tokenizer.eos_token_id


def test_saved_version_round_trips_the_weights(model_store):
    _, model, tokenizer = load_version(model_store, "policy/v0", device="cpu")
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)  # a recognisable change, as training would make
    new = save_to_registry(
        model_store, "policy", model, tokenizer, parent="v0", metrics={"reward": 0.25}
    )

    _, reloaded, _ = load_version(model_store, new.id, device="cpu")
    assert new.version == "v1" and new.manifest.parent == "v0"
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_corrupt_weights_refuse_to_load(model_store):
    info = model_store.resolve("policy")
    weights = info.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match="policy/v0: model.safetensors"):
        load_version(model_store, "policy", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_cuda_without_a_gpu_says_so():
    assert pick_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pick_device("cuda")


@pytest.mark.cpu_paths
def test_precision_settings_resolve_or_are_refused():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    # auto follows the hardware: bf16 only where matmuls have bf16 units.
    assert resolve_precision("auto", cpu) == ("bf16" if has_native_bf16(cpu) else "fp32")
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)


def test_auto_precision_is_fp32_where_the_cpu_has_no_bf16_units(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_CPU_FEATURES", "baseline")
    assert has_native_bf16(torch.device("cpu")) is False
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
