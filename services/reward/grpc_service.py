"""RewardService over gRPC (reward.proto), on top of RewardScorer."""

from __future__ import annotations

import contextlib
import time

import grpc

from services.common.chat_contract import CHAT_ROLES
from services.common.generated.flywheel.v1 import reward_pb2, reward_pb2_grpc
from services.common.grpc_errors import invalid_argument
from services.reward import metrics
from services.reward.batcher import DeadlineExceeded, Overloaded
from services.reward.scorer import NotLoaded, RewardScorer, TooLong

_NO_DEADLINE_S = 365 * 24 * 3600


def _problems(request: reward_pb2.ScoreRequest, prefix: str) -> list[tuple[str, str]]:
    problems = []
    if not request.prompt:
        problems.append((f"{prefix}prompt", "the prompt needs at least one message"))
    for n, message in enumerate(request.prompt):
        if message.role not in CHAT_ROLES:
            problems.append((f"{prefix}prompt[{n}].role", f"one of {', '.join(CHAT_ROLES)}"))
    if not request.answers:
        problems.append((f"{prefix}answers", "at least one answer to score"))
    return problems


def _call(request: reward_pb2.ScoreRequest):
    prompt = [{"role": m.role, "content": m.content} for m in request.prompt]
    return prompt, list(request.answers)


@contextlib.contextmanager
def _observed(method: str, context: grpc.ServicerContext):
    """Count the call by its final status and time it (abort raises out of the block)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        code = context.code() or grpc.StatusCode.OK
        metrics.CALLS.labels(method, code.name).inc()
        metrics.CALL_LATENCY.labels(method).observe(time.perf_counter() - started)


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, scorer: RewardScorer) -> None:
        self._scorer = scorer

    def _score(self, requests, prefixes, context):
        problems = [
            p for r, prefix in zip(requests, prefixes, strict=True) for p in _problems(r, prefix)
        ]
        if problems:
            context.abort_with_status(invalid_argument(problems))
        remaining = context.time_remaining()
        # A call without a deadline reports an enormous time remaining, not None.
        deadline = (
            None
            if remaining is None or remaining > _NO_DEADLINE_S
            else (time.monotonic() + remaining)
        )
        try:
            return self._scorer.score([_call(r) for r in requests], deadline)
        except TooLong as error:
            field = f"{prefixes[error.call]}answers[{error.answer}]"
            context.abort_with_status(invalid_argument([(field, str(error))]))
        except NotLoaded as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except Overloaded as error:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"overloaded: {error}")
        except DeadlineExceeded as error:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))

    def Score(self, request, context):
        with _observed("Score", context):
            version, [rewards] = self._score([request], [""], context)
            return reward_pb2.ScoreResponse(rewards=rewards, model_version=version)

    def ScoreBatch(self, request, context):
        with _observed("ScoreBatch", context):
            if not request.requests:
                context.abort_with_status(invalid_argument([("requests", "at least one request")]))
            prefixes = [f"requests[{i}]." for i in range(len(request.requests))]
            version, rewards = self._score(list(request.requests), prefixes, context)
            return reward_pb2.ScoreBatchResponse(
                responses=[
                    reward_pb2.ScoreResponse(rewards=r, model_version=version) for r in rewards
                ],
                model_version=version,
            )
