import math

import pytest
import torch

from services.rlhf.lm_loss import IGNORE_INDEX, next_token_nll


def test_sums_the_nll_of_labelled_next_tokens_only():
    # Uniform logits over 4 tokens: every labelled token costs ln 4.
    logits = torch.zeros(1, 5, 4)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 3, 0]])  # column 0 is never predicted
    total, count = next_token_nll(logits, labels)
    assert count == 3 and total.item() == pytest.approx(3 * math.log(4))


def test_logits_may_cover_only_the_last_columns():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 7)
    labels = torch.tensor([[IGNORE_INDEX] * 3 + [1, 2, 3], [IGNORE_INDEX] * 4 + [4, 5]])
    full = next_token_nll(logits, labels)
    last = next_token_nll(logits[:, -4:], labels)  # from the column before the first label
    assert last[1] == full[1] == 5  # 3 labels in row 0, 2 in row 1
    assert torch.allclose(last[0], full[0])
