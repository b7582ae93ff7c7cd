"""The batch-wide greedy choice is exactly what each greedy row's own choice would be."""

from __future__ import annotations

import torch

from services.inference.engine.sampling import SamplingParams, TokenChooser, greedy_tokens


def test_greedy_tokens_of_a_batch_equal_each_rows_own_choice():
    torch.manual_seed(0)
    logits = torch.randn(16, 49152) * 4
    tokens, logprobs = greedy_tokens(logits)
    for row in range(16):
        chooser = TokenChooser(SamplingParams(), seed=0, seen=torch.tensor([1, 2]))
        assert chooser.greedy
        assert chooser.choose(logits[row]) == (tokens[row], logprobs[row])


def test_rows_that_sample_or_penalise_repetition_choose_alone():
    seen = torch.tensor([1, 2])
    assert not TokenChooser(SamplingParams(do_sample=True), 0, seen).greedy
    assert not TokenChooser(SamplingParams(temperature=0.5), 0, seen).greedy
    assert not TokenChooser(SamplingParams(repetition_penalty=1.2), 0, seen).greedy
    penalised = TokenChooser(SamplingParams(repetition_penalty=1.2), 0, seen)
    penalised.accept(7)
    assert penalised.seen.tolist() == [1, 2, 7]  # the penalty needs every token it saw


def test_a_top_p_too_small_for_float32_keeps_the_most_likely_token():
    """5e-324 (found by the gateway's schema fuzzing) rounds to 0 in float32; nucleus sampling
    must still keep its first token instead of masking them all (NaN probabilities)."""
    logits = torch.tensor([0.5, 3.0, -1.0, 2.0])
    for top_p in (5e-324, 1e-45, 1e-9):
        chooser = TokenChooser(SamplingParams(top_p=top_p), 7, torch.tensor([], dtype=torch.long))
        token, logprob = chooser.choose(logits)
        assert (token, logprob) == (1, 0.0), top_p
