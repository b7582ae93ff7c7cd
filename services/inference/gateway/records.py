"""What the gateway records with the feedback service for each answer it serves."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.generated.flywheel.v1 import common_pb2, feedback_pb2
from services.inference.gateway.engine_client import Sampling


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def new_group_id() -> str:
    return f"grp_{uuid.uuid4().hex}"


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


def interactions(
    *,
    messages: list[dict],
    answers: list[str],
    response_ids: list[str],
    versions: list[str],
    group: str,
    conversation_id: str,
    samplings: list[Sampling],
    api_key_id: str,
    feedback_token: str,
) -> list[feedback_pb2.Interaction]:
    """One Interaction per served answer of a group (all sharing the feedback token), each
    with the sampling settings its answer was generated with."""
    served_at = Timestamp()
    served_at.FromDatetime(datetime.now(UTC))
    prompt = [common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages]
    return [
        feedback_pb2.Interaction(
            response_id=response_id,
            conversation_id=conversation_id,
            messages=prompt,
            answer=answer,
            candidate_group=group,
            candidate_index=index,
            candidate_count=len(answers),
            model_version=version,
            sampling=_sampling_params(sampling),
            api_key_id=api_key_id,
            feedback_token=feedback_token,
            created_at=served_at,
        )
        for index, (answer, response_id, version, sampling) in enumerate(
            zip(answers, response_ids, versions, samplings, strict=True)
        )
    ]


def _sampling_params(sampling: Sampling) -> common_pb2.SamplingParams:
    params = common_pb2.SamplingParams(
        temperature=1.0 if sampling.temperature is None else sampling.temperature,
        top_p=1.0 if sampling.top_p is None else sampling.top_p,
        max_new_tokens=sampling.max_tokens or 0,
        do_sample=sampling.temperature != 0.0,  # OpenAI: temperature 0 is greedy
        stop=sampling.stop or [],
        repetition_penalty=1.0,
    )
    if sampling.seed is not None:
        params.seed = sampling.seed
    return params
