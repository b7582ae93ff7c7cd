"""The engine serving the real base model (SmolLM2-135M-Instruct): `make test-slow`."""

from __future__ import annotations

import openai
import pytest
import torch

from services.common.model_loading import load_version
from services.common.registry import ModelRegistry
from services.inference.engine.server import EngineServer
from services.rlhf.tokenization import encode_prompt
from tests.inference.inference_helpers import engine_settings

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_base_model_answers_through_the_openai_client(real_store, redis_url, precision):
    registry = ModelRegistry(real_store)
    server = EngineServer(engine_settings(registry, redis_url, precision=precision))
    server.start()
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{server.http.port}/v1", api_key="-", max_retries=0
        )
        reply = client.chat.completions.create(
            model="policy", messages=QUESTION, max_tokens=24, temperature=0
        )
    finally:
        server.stop()
    answer = reply.choices[0].message.content
    assert "Paris" in answer
    if precision == "fp32":  # the batched engine's greedy answer is generate's own
        _, model, tokenizer = load_version(registry, "policy", device="cpu")
        ids = torch.tensor([encode_prompt(tokenizer, QUESTION)])
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=24, do_sample=False)
        expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert answer == expected
