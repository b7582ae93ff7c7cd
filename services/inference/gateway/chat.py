"""``POST /v1/chat/completions``: candidates from the engine, ids, records, ``best_of``.

Every answer served gets a server-minted ``response_id`` and is written to the durable
spool before the client sees the end of the response (the recorder delivers it to the
feedback service later, so a feedback outage costs nothing here). The ``n`` answers of
a request form one candidate group, rated with the ``feedback_token`` returned with
them. ``best_of`` (an extension) samples that many candidates and returns the one the
reward service scores highest; if it cannot score, the first candidate is returned and
``flywheel.best_of.reranked`` says why not. Streamed answers that the client abandons
are not recorded (nobody saw them whole).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common.aio import merge
from services.common.api_keys import KeyRecord
from services.common.chat_contract import MAX_SEED, ChatRole, seeds_fit
from services.common.credentials import new_feedback_token
from services.inference.gateway.canary import CanaryRouter
from services.inference.gateway.engine_client import (
    Completion,
    EngineClient,
    EngineFailed,
    Sampling,
)
from services.inference.gateway.http_metrics import TIME_TO_FIRST_TOKEN
from services.inference.gateway.records import (
    interactions,
    new_conversation_id,
    new_group_id,
    new_response_id,
)
from services.inference.gateway.reward_client import RewardClient, RewardUnavailable
from services.inference.gateway.spool import InteractionSpool

# Strict types: "2" for n or "yes" for stream is a client's mistake to report, not guess at;
# NaN and infinities (which Python's JSON parser reads) are refused too.
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class Message(BaseModel):
    model_config = _STRICT

    role: ChatRole
    content: str


class ChatBody(BaseModel):
    model_config = _STRICT

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="Candidates to generate (at most the gateway's max_n).")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    best_of: int | None = Field(
        None, ge=1, description="Flywheel extension: sample this many, return the RM's best"
    )
    conversation_id: str | None = Field(None, max_length=200)
    user: str | None = None


class InvalidRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class ChatDeps:
    engine: EngineClient
    router: CanaryRouter
    reward: RewardClient
    spool: InteractionSpool
    max_messages: int
    max_n: int
    default_max_tokens: int


def check(body: ChatBody, deps: ChatDeps) -> Sampling:
    """The sampling of a request that can succeed; InvalidRequest otherwise (the rules that
    depend on settings or on several fields; each field's own range is in ChatBody)."""
    if len(body.messages) > deps.max_messages:
        raise InvalidRequest(f"at most {deps.max_messages} messages per request", "messages")
    if body.n > deps.max_n:
        raise InvalidRequest(f"n must be at most {deps.max_n}", "n")
    if body.best_of is not None and body.best_of > 1:
        if body.stream:
            raise InvalidRequest("best_of cannot be streamed: all candidates come first", "best_of")
        if body.n != 1:
            raise InvalidRequest("best_of returns one answer: use it with n = 1", "best_of")
        if body.best_of > deps.max_n:
            raise InvalidRequest(f"best_of must be at most {deps.max_n}", "best_of")
    if not seeds_fit(body.seed, max(body.n, body.best_of or 1)):
        raise InvalidRequest(
            f"seed + candidates - 1 must be at most {MAX_SEED} (candidate i uses seed + i)", "seed"
        )
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return Sampling(
        # Always explicit, so what is recorded is what the engine used, whichever engine.
        max_tokens=body.max_completion_tokens or body.max_tokens or deps.default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
    )


async def complete(body: ChatBody, sampling: Sampling, key: KeyRecord, deps: ChatDeps) -> dict:
    messages = [m.model_dump() for m in body.messages]
    count = body.best_of if body.best_of and body.best_of > 1 else body.n
    samplings = [sampling.for_candidate(i) for i in range(count)]
    version = await deps.router.version_for(key.id)
    candidates: list[Completion] = await asyncio.gather(
        *(deps.engine.complete(messages, s, version) for s in samplings)
    )
    best_of = None
    if count > body.n:
        chosen, best_of = await _rerank(deps.reward, messages, candidates)
        candidates, samplings = [candidates[chosen]], [samplings[chosen]]
    group = _Group(body, key, messages)
    await group.record(
        deps.spool,
        [c.text for c in candidates],
        [c.model_version for c in candidates],
        samplings,
    )
    prompt_tokens = candidates[0].prompt_tokens
    completion_tokens = sum(c.completion_tokens for c in candidates)
    return {
        "id": group.completion_id,
        "object": "chat.completion",
        "created": group.created,
        "model": body.model or "policy",
        "system_fingerprint": candidates[0].model_version,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": None,
                "finish_reason": c.finish_reason,
                "response_id": group.response_ids[index],
            }
            for index, c in enumerate(candidates)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "flywheel": group.metadata(best_of),
    }


async def _rerank(reward: RewardClient, messages, candidates: list[Completion]):
    """(index of the candidate to return, what to say about it under ``flywheel.best_of``)."""
    answers = [c.text for c in candidates]
    try:
        scores = await reward.score(messages, answers)
    except RewardUnavailable as exc:
        return 0, {
            "candidates": len(candidates),
            "reranked": False,
            "reason": f"reward service unavailable: {exc}",
        }
    best = max(range(len(candidates)), key=lambda i: scores.rewards[i])
    return best, {
        "candidates": len(candidates),
        "reranked": True,
        "chosen": best,
        "rewards": scores.rewards,
        "reward_model_version": scores.model_version,
    }


class _Group:
    """The answers of one request: ids, token and what gets recorded."""

    def __init__(self, body: ChatBody, key: KeyRecord, messages) -> None:
        self.body, self.key, self.messages = body, key, messages
        self.completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.group = new_group_id()
        self.feedback_token = new_feedback_token()
        self.conversation_id = body.conversation_id or new_conversation_id()
        self.response_ids: list[str] = []

    async def record(
        self,
        spool: InteractionSpool,
        answers: list[str],
        versions: list[str],
        samplings: list[Sampling],
    ):
        self.response_ids = [new_response_id() for _ in answers]
        records = interactions(
            messages=self.messages,
            answers=answers,
            response_ids=self.response_ids,
            versions=versions,
            group=self.group,
            conversation_id=self.conversation_id,
            samplings=samplings,
            api_key_id=self.key.id,
            feedback_token=self.feedback_token,
        )
        # Durable (fsync) before the client gets the answer: a crash after this loses nothing.
        await asyncio.to_thread(spool.enqueue_many, records)

    def metadata(self, best_of: dict | None) -> dict:
        meta = {
            "candidate_group": self.group,
            "conversation_id": self.conversation_id,
            "feedback_token": self.feedback_token,
            "response_ids": self.response_ids,
        }
        if best_of is not None:
            meta["best_of"] = best_of
        return meta


def stream(body: ChatBody, sampling: Sampling, key: KeyRecord, deps: ChatDeps) -> StreamingResponse:
    messages = [m.model_dump() for m in body.messages]
    group = _Group(body, key, messages)
    samplings = [sampling.for_candidate(i) for i in range(body.n)]

    def chunk(payload: dict) -> str:
        base = {
            "id": group.completion_id,
            "object": "chat.completion.chunk",
            "created": group.created,
            "model": body.model or "policy",
        }
        return "data: " + json.dumps({**base, **payload}, separators=(",", ":")) + "\n\n"

    started = time.perf_counter()

    async def events():
        texts, versions = [""] * body.n, [""] * body.n
        first_token = True
        prompt_tokens, completion_tokens = 0, 0
        version = await deps.router.version_for(key.id)
        candidates = [deps.engine.stream(messages, s, version) for s in samplings]
        try:
            # aclosing: a client that hangs up stops every candidate's engine call at once.
            async with aclosing(merge(candidates)) as deltas:
                async for index, item in deltas:
                    versions[index] = item.model_version or versions[index]
                    if item.completion_tokens is not None:
                        completion_tokens += item.completion_tokens
                        prompt_tokens = item.prompt_tokens or prompt_tokens
                        continue
                    texts[index] += item.text
                    if first_token and item.text:
                        TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - started)
                        first_token = False
                    delta = {"content": item.text} if item.text else {}
                    choice = {"index": index, "delta": delta, "logprobs": None}
                    choice["finish_reason"] = item.finish_reason
                    yield chunk({"system_fingerprint": item.model_version, "choices": [choice]})
        except EngineFailed as exc:
            error = {"message": exc.message, "type": "server_error", "code": exc.code}
            yield "data: " + json.dumps({"error": error}) + "\n\n"
            return
        await group.record(deps.spool, texts, versions, samplings)
        yield chunk(
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "flywheel": group.metadata(None),
            }
        )
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
