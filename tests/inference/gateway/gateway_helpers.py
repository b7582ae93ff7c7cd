"""Helpers for the gateway tests: served answers as the gateway records them."""

from __future__ import annotations

import uuid

from services.common.credentials import api_key_id, new_api_key, new_feedback_token
from services.common.generated.flywheel.v1 import common_pb2, feedback_pb2


def make_interaction(
    response_id: str | None = None, *, answer: str = "Blue.", **fields
) -> feedback_pb2.Interaction:
    """A served answer as the gateway records it (n = 1, its own candidate group)."""
    response_id = response_id or f"resp_{uuid.uuid4().hex}"
    values = dict(
        response_id=response_id,
        conversation_id=f"conv_{response_id}",
        messages=[common_pb2.ChatMessage(role="user", content="Name a colour.")],
        answer=answer,
        candidate_group=f"grp_{response_id}",
        candidate_index=0,
        candidate_count=1,
        model_version="v0",
        sampling=common_pb2.SamplingParams(temperature=0.7, top_p=0.9, do_sample=True),
        api_key_id=api_key_id(new_api_key()),
        feedback_token=new_feedback_token(),
    )
    values.update(fields)
    return feedback_pb2.Interaction(**values)
