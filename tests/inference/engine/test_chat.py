"""The engine's OpenAI chat route, through the official openai client and huggingface_hub."""

from __future__ import annotations

import openai
import pytest
from huggingface_hub import InferenceClient

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def client(engine):
    return openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)


def test_chat_completion_with_usage_and_version(client):
    reply = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=8, temperature=0
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("length", "stop")
    assert reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.system_fingerprint == "v0"
    again = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert again.choices[0].message.content == choice.message.content  # greedy


def test_streaming_gives_the_same_answer(client):
    whole = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=10, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="policy",
            messages=MESSAGES,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.choices[0].finish_reason]


def test_n_candidates_streamed_and_not(client):
    reply = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=6, n=3, seed=None
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    chunks = list(
        client.chat.completions.create(
            model="policy", messages=MESSAGES, max_tokens=6, n=2, stream=True
        )
    )
    indexes = {c.choices[0].index for c in chunks if c.choices}
    assert indexes == {0, 1}


def test_stop_sequence_is_not_part_of_the_answer(client):
    free = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=12, temperature=0
    ).choices[0]
    stop = free.message.content[4:6]
    stopped = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=12, temperature=0, stop=[stop]
    ).choices[0]
    assert stopped.finish_reason == "stop"
    assert free.message.content.startswith(stopped.message.content)
    assert stop not in stopped.message.content


def test_bad_chat_requests_are_refused(client):
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="policy", messages=[], max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="policy", messages=[{"role": "wizard", "content": "hi"}], max_tokens=4
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="policy", messages=MESSAGES, n=99)


def test_huggingface_hub_chat_completion(engine):
    client = InferenceClient(engine.url)
    reply = client.chat_completion(MESSAGES, max_tokens=6, temperature=0)
    assert reply.choices[0].message.content
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat_completion(MESSAGES, max_tokens=6, temperature=0, stream=True)
        if chunk.choices
    )
    assert streamed == reply.choices[0].message.content


def test_n_answers_with_a_seed_differ_and_repeat(client):
    first = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=8, n=2, seed=11
    )
    again = client.chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=8, n=2, seed=11
    )
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] != texts[1]
