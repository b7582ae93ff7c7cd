"""Next-token negative log-likelihood over labelled positions: the one language-model loss.

SFT (answer tokens only), the PPO-ptx term (pretraining text) and perplexity (the
alignment tax) all need "sum of -log p(label) where a label is set, and how many":
they differ only in which positions carry a label, which the caller marks with
``IGNORE_INDEX`` elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value that carries no loss (F.cross_entropy's default)


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of the NLL of every labelled token, how many there are).

    ``logits`` (B, L', V) may cover only the last L' <= L columns of ``labels`` (B, L)
    (``logits_to_keep``); they are lined up with the same columns. The logit at column
    c predicts the token at c + 1, so logits lose their last column and labels their
    first. Computed in fp32 whatever the logits' dtype.
    """
    labels = labels[:, labels.shape[1] - logits.shape[1] :]
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    total = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total, int((shifted_labels != IGNORE_INDEX).sum())
