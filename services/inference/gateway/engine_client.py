"""Reaching the policy engine with the maintained Hugging Face TGI client.

``huggingface_hub.AsyncInferenceClient`` speaks to the built-in engine, a real TGI or a
vLLM server alike (all serve ``/v1/chat/completions``), so swapping the engine is a
change of ``FLYWHEEL_GATEWAY_ENGINE_URL``. One call generates one candidate; ``n``
candidates are ``n`` concurrent calls, which every engine supports and ours batches.
The version that answered is read from ``system_fingerprint`` (ours puts the registry
version there; TGI and vLLM put their own build, which is then what gets recorded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError

from services.common.chat_contract import candidate_seed


class EngineFailed(Exception):
    """The engine refused or failed; ``status`` is what the gateway answers with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: list[str] | None

    def for_candidate(self, index: int) -> Sampling:
        """Candidate ``index`` of a request: candidates must differ, so each gets its
        candidate seed (services/common/chat_contract.py)."""
        if self.seed is None or index == 0:
            return self
        return replace(self, seed=candidate_seed(self.seed, index))

    def as_kwargs(self) -> dict:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str


@dataclass(frozen=True)
class Delta:
    text: str
    finish_reason: str | None
    model_version: str
    completion_tokens: int | None = None  # on the usage chunk only
    prompt_tokens: int | None = None


class EngineClient:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._client = AsyncInferenceClient(base_url=url, timeout=timeout_s)

    async def close(self) -> None:
        await self._client.close()

    async def complete(
        self, messages: list[dict], sampling: Sampling, version: str | None = None
    ) -> Completion:
        """One candidate; ``version`` names the model to answer (the canary), None: the
        promoted one."""
        try:
            reply = await self._client.chat_completion(
                messages, model=version, **sampling.as_kwargs()
            )
        except Exception as exc:
            raise _failure(exc) from exc
        choice = reply.choices[0]
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=reply.usage.prompt_tokens if reply.usage else 0,
            completion_tokens=reply.usage.completion_tokens if reply.usage else 0,
            model_version=reply.system_fingerprint or "",
        )

    async def stream(
        self, messages: list[dict], sampling: Sampling, version: str | None = None
    ) -> AsyncIterator[Delta]:
        try:
            chunks = await self._client.chat_completion(
                messages,
                model=version,
                stream=True,
                stream_options={"include_usage": True},
                **sampling.as_kwargs(),
            )
            async for chunk in chunks:
                version = chunk.system_fingerprint or ""
                if chunk.choices:
                    choice = chunk.choices[0]
                    yield Delta(choice.delta.content or "", choice.finish_reason, version, None)
                elif chunk.usage is not None:
                    usage = chunk.usage
                    yield Delta("", None, version, usage.completion_tokens, usage.prompt_tokens)
        except EngineFailed:
            raise
        except Exception as exc:
            raise _failure(exc) from exc


def _failure(exc: Exception) -> EngineFailed:
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        try:
            detail = exc.response.json().get("error") or str(exc)
        except ValueError:
            detail = str(exc)
        if status == 429:
            return EngineFailed(503, "engine_overloaded", "The engine is overloaded; retry soon.")
        if status in (400, 422):
            return EngineFailed(400, "invalid_request", str(detail))
        if status == 503:
            return EngineFailed(503, "engine_unavailable", "The engine is not ready yet.")
        return EngineFailed(502, "engine_error", f"The engine failed: {detail}")
    return EngineFailed(503, "engine_unavailable", f"The engine cannot be reached: {exc}")
