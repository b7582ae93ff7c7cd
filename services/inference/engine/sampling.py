"""Choosing each request's next token from the batch's logits, with TGI's parameters.

As in TGI, setting a temperature, ``top_k`` or ``top_p`` turns sampling on even without
``do_sample``; the repetition penalty divides positive and multiplies negative logits of
tokens already in the sequence (prompt included); the logprob reported for a token is
taken from the distribution it was chosen from, after those adjustments.

Every finite positive parameter is safe here: the logits are shifted so their maximum is 0
before dividing by the temperature (a tiny temperature gives -inf, never inf - inf = NaN;
one below float32's range counts as its smallest value),
and a penalty that overflows is clipped to the float range, so one request's extreme
values cannot produce NaN probabilities (which would make ``multinomial`` raise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate max_new_tokens whatever the model says (benchmarks)

    @property
    def samples(self) -> bool:
        warped = (
            (self.temperature is not None and self.temperature != 1.0)
            or (self.top_k is not None and self.top_k > 0)
            or (self.top_p is not None and self.top_p < 1.0)
        )
        return self.do_sample or warped


@dataclass
class TokenChooser:
    """One request's sampling state: its parameters, its random generator, the tokens seen."""

    params: SamplingParams
    seed: int
    seen: torch.Tensor  # token ids of prompt + generated, for the repetition penalty
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        """Plain argmax of the raw logits: the scheduler picks these rows' tokens for the
        whole batch at once (``greedy_tokens``) and hands each to ``accept``."""
        penalty = self.params.repetition_penalty
        return not self.params.samples and (penalty is None or penalty == 1.0)

    def accept(self, token: int) -> None:
        """Record a token chosen for this request elsewhere (``greedy_tokens``)."""
        if not self.greedy:
            self.seen = torch.cat((self.seen, torch.tensor([token], dtype=self.seen.dtype)))

    def choose(self, logits: torch.Tensor) -> tuple[int, float]:
        """(token id, its logprob) from one row of fp32 logits, (vocab,)."""
        params = self.params
        if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
            logits = logits.clone()
            seen = logits[self.seen]
            penalty = params.repetition_penalty
            logits[self.seen] = torch.where(seen < 0, seen * penalty, seen / penalty)
            logits = _finite(logits)
        if params.samples:
            if params.temperature is not None and params.temperature != 1.0:
                # Below float32's smallest normal a temperature would round to 0 (0/0).
                temperature = max(params.temperature, torch.finfo(logits.dtype).tiny)
                logits = (logits - logits.max()) / temperature
            if params.top_k is not None and 0 < params.top_k < logits.shape[-1]:
                cutoff = torch.topk(logits, params.top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            if params.top_p is not None and params.top_p < 1.0:
                logits = _nucleus(logits, params.top_p)
            logprobs = torch.log_softmax(logits, dim=-1)
            token = int(torch.multinomial(logprobs.exp(), 1, generator=self.generator))
        else:
            logprobs = torch.log_softmax(logits, dim=-1)
            token = int(torch.argmax(logits))
        self.accept(token)
        return token, float(logprobs[token])


def greedy_tokens(logits: torch.Tensor) -> tuple[list[int], list[float]]:
    """Each row's argmax and its logprob, for a (rows, vocab) batch in two passes over it
    rather than two per row: what ``choose`` gives a greedy row, bit for bit."""
    tokens = logits.argmax(dim=-1)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
    return tokens.tolist(), logprobs.tolist()


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """Overflowed logits clipped to the float range (NaN, which no valid input makes, is
    treated as impossible)."""
    top = torch.finfo(logits.dtype).max
    return torch.nan_to_num(logits, nan=float("-inf"), posinf=top, neginf=-top)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities reach ``top_p``."""
    ordered, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    # Drop a token when the ones before it already reach top_p. The first always stays, also
    # for a top_p below float32's range, which rounds to 0 in the comparison (0 >= 0).
    drop = (cumulative - torch.softmax(ordered, dim=-1)) >= top_p
    drop[0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
