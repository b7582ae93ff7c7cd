"""``POST /v1/chat/completions`` on the engine: OpenAI's chat shape over the same scheduler.

The chat is turned into tokens with the policy's own chat template. Sampling follows
OpenAI's defaults (temperature 1; 0 means greedy). ``n`` answers are generated side by
side in the batch; streamed, their chunks interleave, each tagged with its ``index``.
A stop sequence ends an answer and is not part of it. ``system_fingerprint`` and the
``X-Model-Version`` header name the policy version that answered.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from services.common.aio import merge
from services.common.chat_contract import MAX_SEED, ChatRole, candidate_seed, seeds_fit
from services.inference.engine import metrics
from services.inference.engine.params import STRICT, ValidationFailed
from services.inference.engine.responses import ChatCompletion
from services.inference.engine.runner import GenerationError, Prepared, Runner
from services.inference.engine.sampling import SamplingParams
from services.inference.engine.scheduler import Token
from services.rlhf.tokenization import encode_prompt

FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class ChatMessage(BaseModel):
    model_config = STRICT

    role: ChatRole
    content: str


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = STRICT

    # A version name ("v3") picks that version if it is loaded here (the gateway names the
    # canary this way); anything else, or a version not loaded, gets the promoted one.
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=0, le=0, description="Not supported.")
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="Not supported.")
    logprobs: bool | None = None
    ignore_eos: bool = False  # vLLM's extension: keep generating past end-of-sequence


def sampling_for(body: ChatRequest, runner: Runner) -> SamplingParams:
    settings = runner.settings
    if body.n > settings.max_best_of:
        raise ValidationFailed(f"`n` must be <= {settings.max_best_of}. Given: {body.n}")
    if not seeds_fit(body.seed, body.n):
        raise ValidationFailed(f"`seed` + `n` - 1 must be <= {MAX_SEED}")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > settings.max_stop_sequences:
        raise ValidationFailed(
            f"`stop` supports up to {settings.max_stop_sequences} stop sequences. "
            f"Given: {len(stop)}"
        )
    max_new = body.max_completion_tokens or body.max_tokens or settings.default_max_new_tokens
    temperature = 1.0 if body.temperature is None else body.temperature
    greedy = temperature == 0.0
    return SamplingParams(
        max_new_tokens=max_new,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy or body.top_p in (None, 1.0) else body.top_p,
        seed=body.seed,
        stop=tuple(s for s in stop if s),
        ignore_eos=body.ignore_eos,
    )


def add_chat_route(app: FastAPI, runner: Runner, responses: dict, stream_content: dict) -> None:
    @app.post(
        "/v1/chat/completions",
        responses={
            200: {
                "description": "A completion, or chunks when streaming",
                "model": ChatCompletion,
                "content": stream_content,
            },
            **responses,
        },
    )
    async def chat_completions(body: ChatRequest, request: Request):
        started = time.perf_counter()
        params = sampling_for(body, runner)
        policy = runner.policy(body.model)
        messages = [m.model_dump() for m in body.messages]
        prepared = runner.prepare(policy, encode_prompt(policy.tokenizer, messages), params)
        metrics.VALIDATION_DURATION.observe(time.perf_counter() - started)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            return _stream(runner, prepared, body, completion_id, created, started)
        runs = await asyncio.gather(
            *(runner.generate(p, request.is_disconnected) for p in _candidates(prepared, body.n))
        )
        metrics.REQUEST_SUCCESS.inc()
        metrics.REQUEST_DURATION.observe(time.perf_counter() - started)
        completion_tokens = sum(run.finished.generated_tokens for run in runs)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model or "policy",
                "system_fingerprint": policy.version,
                "choices": [
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": _answer(run.finished)},
                        "logprobs": None,
                        "finish_reason": FINISH_REASONS[run.finished.reason],
                    }
                    for index, run in enumerate(runs)
                ],
                "usage": _usage(len(prepared.input_ids), completion_tokens),
            }
        )


def _stream(runner: Runner, prepared: Prepared, body: ChatRequest, completion_id, created, started):
    streams = [runner.start(p) for p in _candidates(prepared, body.n)]
    version = prepared.policy.version

    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model or "policy",
            "system_fingerprint": version,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"

    async def events():
        try:
            for index in range(body.n):
                yield chunk([_delta(index, {"role": "assistant", "content": ""})])
            completion_tokens = 0
            async with aclosing(merge([runner.tokens(s) for s in streams])) as tokens:
                async for index, token in tokens:
                    yield from_token(index, token)
                    if token.finished is not None:
                        completion_tokens += token.finished.generated_tokens
            metrics.REQUEST_SUCCESS.inc()
            metrics.REQUEST_DURATION.observe(time.perf_counter() - started)
            if body.stream_options and body.stream_options.include_usage:
                yield chunk([], _usage(len(prepared.input_ids), completion_tokens))
            yield "data: [DONE]\n\n"
        except GenerationError as exc:
            metrics.REQUEST_FAILURE.labels("generation").inc()
            error = {"error": str(exc), "error_type": "generation"}
            yield "data: " + json.dumps(error) + "\n\n"
        finally:
            for stream in streams:  # the client left: stop every answer's generation
                stream.cancel()

    streamed = [0] * body.n  # characters of each answer sent so far

    def from_token(index: int, token: Token) -> str:
        # The last chunk sends what remains of the answer, which ends before the stop
        # sequence. (Text of a stop sequence spread over several tokens may have been
        # streamed before the sequence completed, as with TGI.)
        finished = token.finished
        text = "" if token.special else token.text
        if finished is not None:
            text = _answer(finished)[streamed[index] :]
        streamed[index] += len(text)
        choice = _delta(index, {"content": text} if text else {})
        if finished is not None:
            choice["finish_reason"] = FINISH_REASONS[finished.reason]
        return chunk([choice])

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"X-Model-Version": version, "Cache-Control": "no-cache"},
    )


def _candidates(prepared: Prepared, n: int) -> list[Prepared]:
    """``n`` requests for the ``n`` answers, each with its candidate seed."""
    seed = prepared.params.seed
    if seed is None or n == 1:
        return [prepared] * n
    return [
        replace(prepared, params=replace(prepared.params, seed=candidate_seed(seed, index)))
        for index in range(n)
    ]


def _delta(index: int, delta: dict) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


def _answer(finished) -> str:
    text = finished.generated_text
    if finished.stop_sequence and text.endswith(finished.stop_sequence):
        text = text[: -len(finished.stop_sequence)]
    return text


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
