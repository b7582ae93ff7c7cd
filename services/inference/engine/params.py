"""TGI's request bodies and its validation rules, with its error messages.

TGI's clients (``huggingface_hub.InferenceClient``, ``text-generation``) read the
``error_type`` of a refusal to raise the matching exception, and people search for TGI's
messages, so both are kept as TGI words them. Token-count limits need the tokenizer and
are checked in :func:`check_lengths` once the prompt is encoded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.chat_contract import MAX_SEED
from services.inference.engine.sampling import SamplingParams


class ValidationFailed(ValueError):
    """A request TGI would refuse with 422 and ``error_type: validation``."""


# Strict: a client's "2" for an int or 1 for a bool is a mistake to report, not to guess
# at; no NaN or infinity either (Python's JSON parser reads NaN, Infinity and 1e309).
STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class GenerateParameters(BaseModel):
    # Unknown parameters (grammar...) are accepted and ignored, as TGI ignores what a
    # model does not use; the ones with an effect are checked below. ``adapter_id``, TGI's
    # name for "which weights answer", picks a loaded version as the chat route's ``model``.
    # Parameters this engine does not implement accept only their "off" value.
    model_config = ConfigDict(extra="allow", **STRICT)

    best_of: int | None = Field(None, ge=1)
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="Not supported.")
    max_new_tokens: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, ge=1)
    top_n_tokens: int | None = Field(None, ge=0, le=0, description="Not supported.")
    top_p: float | None = Field(None, gt=0, lt=1)
    truncate: int | None = Field(None, ge=1)
    typical_p: None = Field(None, description="Not supported.")
    watermark: Literal[False] = Field(False, description="Not supported.")


# TGI's words for a parameter outside its range, so clients and people see what TGI says.
RANGE_MESSAGES = {
    "best_of": "`best_of` must be > 0",
    "frequency_penalty": "`frequency_penalty` is not supported by this engine",
    "max_new_tokens": "`max_new_tokens` must be strictly positive",
    "repetition_penalty": "`repetition_penalty` must be strictly positive",
    "seed": f"`seed` must be >= 0 and <= {MAX_SEED}",
    "temperature": "`temperature` must be strictly positive",
    "top_k": "`top_k` must be strictly positive",
    "top_n_tokens": "`top_n_tokens` is not supported by this engine",
    "top_p": "`top_p` must be > 0.0 and < 1.0",
    "truncate": "`truncate` must be strictly positive",
    "typical_p": "`typical_p` is not supported by this engine",
    "watermark": "`watermark` is not supported by this engine",
    "inputs": "`inputs` cannot be empty",
}
_RANGE_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "literal_error",
    "none_required",
    "string_too_short",
}


def describe_problem(error: dict) -> str:
    """One pydantic error in TGI's words where TGI has some, else pydantic's."""
    loc = tuple(error["loc"])
    field = str(loc[-1]) if loc else ""
    tgi_field = loc[:2] == ("body", "parameters") or loc == ("body", "inputs")
    if tgi_field and error["type"] in _RANGE_ERRORS and field in RANGE_MESSAGES:
        return RANGE_MESSAGES[field]
    if error["type"] == "finite_number":
        return f"`{field}` must be a finite number"
    where = ".".join(str(p) for p in error["loc"][1:]) or "body"
    return f"{where}: {error['msg']}"


def requested_version(parameters: GenerateParameters) -> str | None:
    """The version a TGI request names with ``adapter_id``, if it names one."""
    wanted = (parameters.model_extra or {}).get("adapter_id")
    return wanted if isinstance(wanted, str) else None


class GenerateRequest(BaseModel):
    model_config = STRICT

    inputs: str = Field(min_length=1)
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
    """The sampling parameters of a request whose fields passed the schema (each field's
    range lives there); the rules between fields and against the settings are here."""
    p = parameters
    if len(p.stop) > max_stop_sequences:
        raise ValidationFailed(
            f"`stop` supports up to {max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if any(not s for s in p.stop):
        raise ValidationFailed("`stop` sequences cannot be empty")
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
