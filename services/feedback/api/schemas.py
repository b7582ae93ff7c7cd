"""Request and response bodies of the HTTP API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ResponseId = Annotated[str, Field(min_length=1, max_length=64, description="A served answer's id.")]


class _FeedbackBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_event_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:\-]+$",
        description="Chosen by the client; a retry with the same id (and the same request) "
        "returns the stored event instead of recording it twice.",
    )
    feedback_token: str | None = Field(
        None,
        max_length=256,
        description="The feedback token that came with the answers, for clients (browsers) "
        "that do not hold the API key. Same as the X-Feedback-Token header.",
    )


# Why an answer got its thumb (the chat page's chips; a client may send any of them).
ThumbReason = Literal[
    "not_factual",  # not factually correct (the paper's "hallucination")
    "ignored_instruction",  # did not do what was asked
    "too_long",
    "too_short",
    "refused",  # refused when it should not have
    "unsafe",  # harmful, or inappropriate for an assistant
    "helpful",  # a reason for a thumb up
    "other",
]


class ThumbFeedback(_FeedbackBase):
    """Thumbs up (+1) or down (-1) on one answer."""

    kind: Literal["thumb"]
    response_id: ResponseId
    value: Literal[1, -1, "up", "down"] = Field(
        description='+1 (up) or -1 (down); "up" and "down" also do (stored as +1 / -1).'
    )
    comment: str | None = Field(None, description="Optional free text.")
    reasons: list[ThumbReason] | None = Field(
        None,
        max_length=8,
        description="Optional reasons for the thumb, each at most once: "
        + ", ".join(f'"{r}"' for r in ThumbReason.__args__)
        + ".",
    )

    @field_validator("reasons", mode="after")
    @classmethod
    def _reasons_once(cls, reasons: list[str] | None) -> list[str] | None:
        if reasons is not None and len(set(reasons)) != len(reasons):
            raise ValueError("each reason may be given once")
        return reasons

    @field_validator("value", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # true == 1 in Python: without this a JSON true would pass as a thumb up.
        if isinstance(value, bool):
            raise ValueError('value must be 1, -1, "up" or "down", not a boolean')
        return value

    @field_validator("value", mode="after")
    @classmethod
    def _words(cls, value: Any) -> Any:
        return {"up": 1, "down": -1}.get(value, value)


class RankingFeedback(_FeedbackBase):
    """An order over every answer of one candidate group, best first, in tiers of ties."""

    kind: Literal["ranking"]
    ranking: list[Annotated[list[ResponseId], Field(min_length=1)]] = Field(
        description='Tiers, best first; answers in one tier are tied: [["r2"], ["r1", "r3"]].',
        min_length=1,
    )

    @model_validator(mode="after")
    def _shape(self) -> RankingFeedback:
        if any(not tier for tier in self.ranking):
            raise ValueError("a tier of the ranking is empty")
        if sum(len(tier) for tier in self.ranking) < 2:
            raise ValueError("a ranking orders at least two answers")
        return self


class PairwiseFeedback(_FeedbackBase):
    """A vote between two answers to the same prompt."""

    kind: Literal["pairwise"]
    response_a: ResponseId
    response_b: ResponseId
    outcome: Literal["a", "b", "tie", "both_bad"] = Field(
        description='"a" or "b" (the better one), "tie", or "both_bad".'
    )

    @model_validator(mode="after")
    def _distinct(self) -> PairwiseFeedback:
        if self.response_a == self.response_b:
            raise ValueError("response_a and response_b must be different answers")
        return self


FeedbackRequest = Annotated[
    ThumbFeedback | RankingFeedback | PairwiseFeedback, Field(discriminator="kind")
]


class ComparisonSummary(BaseModel):
    comparison_id: str
    pairs: int


class FeedbackEvent(BaseModel):
    """A stored feedback event. Kind-specific fields are those of the request."""

    id: str
    kind: Literal["thumb", "ranking", "pairwise"]
    status: Literal["current", "replaced"] = Field(
        description="'replaced' once a later vote by the same key on the same answer(s) "
        "(same kind) took its place."
    )
    replaces: str | None
    replaced_by: str | None
    client_event_id: str | None
    rater_key_id: str
    via: Literal["api_key", "feedback_token"]
    candidate_group: str
    recorded_at: str
    comparison: ComparisonSummary | None = Field(
        description="The comparison this event produced; null when it gives no pairs "
        "(a tie, both bad, or thumbs that are all up or all down)."
    )
    response_id: str | None = None
    value: int | None = None
    comment: str | None = None
    reasons: list[str] | None = None
    ranking: list[list[str]] | None = None
    response_a: str | None = None
    response_b: str | None = None
    outcome: str | None = None


class ChatMessageOut(BaseModel):
    role: str
    content: str


class InteractionOut(BaseModel):
    response_id: str
    conversation_id: str
    candidate_group: str
    candidate_index: int
    candidate_count: int
    messages: list[ChatMessageOut]
    answer: str
    model_version: str
    sampling: dict[str, Any]
    api_key_id: str
    created_at: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. 'ranking_incomplete'.")
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: ErrorBody
