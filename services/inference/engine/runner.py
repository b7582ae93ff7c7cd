"""From a validated request to generated tokens: encoding, limits, queueing, collecting.

Shared by the TGI routes and the OpenAI chat route, so both apply the same limits, the
same overload rule and the same handling of a client that goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.inference.engine import metrics
from services.inference.engine.params import ValidationFailed, check_lengths
from services.inference.engine.policies import PolicyHolder
from services.inference.engine.sampling import SamplingParams
from services.inference.engine.scheduler import (
    Failed,
    Finished,
    GenerationStream,
    LoadedPolicy,
    Scheduler,
    Token,
)
from services.inference.engine.settings import EngineSettings


class NotReady(Exception):
    """No policy is loaded yet."""


class GenerationError(Exception):
    """The engine failed while generating (TGI's 424)."""


class ClientGone(Exception):
    """The client left before its answer was complete; the generation was cancelled."""


@dataclass(frozen=True)
class Prepared:
    policy: LoadedPolicy
    input_ids: list[int]
    params: SamplingParams


@dataclass
class Generation:
    """One finished generation: its tokens and how it ended."""

    tokens: list[Token]
    finished: Finished


class Runner:
    def __init__(self, settings: EngineSettings, policies: PolicyHolder, scheduler: Scheduler):
        self.settings = settings
        self.policies = policies
        self.scheduler = scheduler

    def policy(self, version: str | None = None) -> LoadedPolicy:
        """The policy that answers a request naming ``version`` (see PolicyHolder.for_request)."""
        policy = self.policies.for_request(version)
        if policy is None:
            raise NotReady("the engine is still loading its model")
        return policy

    def prepare(
        self, policy: LoadedPolicy, input_ids: list[int], params: SamplingParams
    ) -> Prepared:
        """Check the token limits, TGI's way; ``params`` were checked already."""
        check_lengths(
            len(input_ids),
            params.max_new_tokens,
            max_input_tokens=self.settings.max_input_tokens,
            max_total_tokens=self.settings.max_total_tokens,
        )
        return Prepared(policy, input_ids, params)

    def start(self, prepared: Prepared) -> GenerationStream:
        """Queue the request (Overloaded if the engine is full)."""
        metrics.INPUT_LENGTH.observe(len(prepared.input_ids))
        metrics.MAX_NEW_TOKENS.observe(prepared.params.max_new_tokens)
        stream = GenerationStream(asyncio.get_running_loop())
        self.scheduler.submit(prepared.policy, prepared.input_ids, prepared.params, stream)
        return stream

    async def tokens(
        self, stream: GenerationStream, disconnected: Callable[[], object] | None = None
    ) -> AsyncIterator[Token]:
        """The stream's tokens until the one that finishes it; cancels the generation if the
        consumer stops early or ``disconnected()`` (awaitable) says the client left."""
        try:
            while True:
                if disconnected is None:
                    event = await stream.next()
                else:
                    event = await _next_or_disconnect(stream, disconnected)
                    if event is None:
                        return
                if isinstance(event, Failed):
                    raise GenerationError(event.message)
                yield event
                if event.finished is not None:
                    _observe(event.finished)
                    return
        finally:
            stream.cancel()  # no-op when it finished; stops the compute when it did not

    async def generate(
        self, prepared: Prepared, disconnected: Callable[[], object] | None = None
    ) -> Generation:
        """Run to the end; ClientGone if the client left (the generation is cancelled)."""
        tokens: list[Token] = []
        async for token in self.tokens(self.start(prepared), disconnected):
            tokens.append(token)
            if token.finished is not None:
                return Generation(tokens, token.finished)
        raise ClientGone("the client disconnected")


async def _next_or_disconnect(stream: GenerationStream, disconnected) -> object | None:
    """The next event, checking every 0.25 s whether the client is still there."""
    while True:
        try:
            return await asyncio.wait_for(stream.next(), timeout=0.25)
        except TimeoutError:
            if await disconnected():
                return None


def _observe(finished: Finished) -> None:
    metrics.QUEUE_DURATION.observe(finished.queue_s)
    metrics.INFERENCE_DURATION.observe(finished.inference_s)
    metrics.GENERATED_TOKENS.observe(finished.generated_tokens)
    if finished.generated_tokens:
        metrics.TIME_PER_TOKEN.observe(finished.inference_s / finished.generated_tokens)


__all__ = ["ClientGone", "GenerationError", "NotReady", "Prepared", "Runner", "ValidationFailed"]
