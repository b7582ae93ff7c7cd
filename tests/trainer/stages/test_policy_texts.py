"""The texts the policy stages read: PPO-ptx trains on one set, the alignment tax is measured
on another that no stage trains on."""

from __future__ import annotations

from services.trainer.stages.policy import ptx_texts, tax_texts


def _sentences(texts: list[str]) -> set[str]:
    return {s.strip().lower() for text in texts for s in text.split(".") if s.strip()}


def test_the_tax_is_measured_on_text_ptx_never_trains_on():
    ptx, tax = ptx_texts(), tax_texts()
    assert len(tax) >= 20 and len(ptx) >= 10
    # Not one sentence in common: a policy that learned the ptx texts by heart gains nothing
    # on the tax texts (their perplexity fell 39 % when they were the same texts).
    assert not _sentences(ptx) & _sentences(tax)
