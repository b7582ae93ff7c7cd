"""TGI's request bodies and its validation rules, with its error messages.

TGI's clients (``huggingface_hub.InferenceClient``, ``text-generation``) read the
``error_type`` of a refusal to raise the matching exception, and people search for TGI's
messages, so both are kept as TGI words them. Token-count limits need the tokenizer and
are checked in :func:`check_lengths` once the prompt is encoded.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.inference.engine.sampling import SamplingParams


class ValidationFailed(ValueError):
    """A request TGI would refuse with 422 and ``error_type: validation``."""


class GenerateParameters(BaseModel):
    # Unknown parameters (grammar, adapter_id...) are accepted and ignored, as TGI
    # ignores what a model does not use; the ones with an effect are checked below.
    model_config = ConfigDict(extra="allow")

    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0)
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False


class GenerateRequest(BaseModel):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class CompatGenerateRequest(GenerateRequest):
    """``POST /``: a generate request that may ask for a stream."""

    stream: bool = False


def check_parameters(
    parameters: GenerateParameters,
    *,
    streaming: bool,
    max_best_of: int,
    max_stop_sequences: int,
    default_max_new_tokens: int,
) -> SamplingParams:
    """The sampling parameters of a valid request; ValidationFailed otherwise."""
    p = parameters
    if p.temperature is not None and p.temperature <= 0:
        raise ValidationFailed("`temperature` must be strictly positive")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise ValidationFailed("`repetition_penalty` must be strictly positive")
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        raise ValidationFailed("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.frequency_penalty not in (None, 0.0):
        raise ValidationFailed("`frequency_penalty` is not supported by this engine")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise ValidationFailed("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise ValidationFailed("`typical_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None:
        raise ValidationFailed("`typical_p` is not supported by this engine")
    if p.top_k is not None and p.top_k <= 0:
        raise ValidationFailed("`top_k` must be strictly positive")
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise ValidationFailed("`max_new_tokens` must be strictly positive")
    if len(p.stop) > max_stop_sequences:
        raise ValidationFailed(
            f"`stop` supports up to {max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if any(not s for s in p.stop):
        raise ValidationFailed("`stop` sequences cannot be empty")
    if p.top_n_tokens:
        raise ValidationFailed("`top_n_tokens` is not supported by this engine")
    if p.watermark:
        raise ValidationFailed("`watermark` is not supported by this engine")
    params = SamplingParams(
        max_new_tokens=p.max_new_tokens or default_max_new_tokens,
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        stop=tuple(p.stop),
    )
    if p.best_of is not None:
        if p.best_of <= 0:
            raise ValidationFailed("`best_of` must be > 0")
        if p.best_of > max_best_of:
            raise ValidationFailed(
                f"`best_of` must be > 0 and <= {max_best_of}. Given: {p.best_of}"
            )
        if p.best_of > 1:
            if streaming:
                raise ValidationFailed("`best_of` != 1 is not allowed for this endpoint")
            if not params.samples:
                raise ValidationFailed("you must use sampling when `best_of` is > 1")
            if p.seed is not None:
                raise ValidationFailed("`seed` must not be set when `best_of` > 1")
    return params


def check_lengths(
    input_tokens: int, max_new_tokens: int, *, max_input_tokens: int, max_total_tokens: int
) -> None:
    if input_tokens == 0:
        raise ValidationFailed("`inputs` cannot be empty")
    if input_tokens > max_input_tokens:
        raise ValidationFailed(
            f"`inputs` tokens must be <= {max_input_tokens}. Given: {input_tokens}"
        )
    if input_tokens + max_new_tokens > max_total_tokens:
        raise ValidationFailed(
            f"`inputs` tokens + `max_new_tokens` must be <= {max_total_tokens}. "
            f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
