"""The served reward model: same scores as the RM library, batching changes nothing, versions
reload without failing calls, and bad input is refused before it costs compute."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import AutoTokenizer

from services.reward.batcher import DeadlineExceeded
from services.reward.scorer import NotLoaded, RewardScorer, TooLong
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_reading import read_rewards

PROMPT = [{"role": "user", "content": "Name a colour."}]
ANSWERS = ["Blue.", "Red, like a ripe tomato.", "I would rather not say."]


@pytest.fixture
def scorer(reward_store):
    scorer = RewardScorer(
        reward_store, device="cpu", precision="fp32", max_tokens=256, window_s=0.01
    )
    scorer.start()
    yield scorer
    scorer.stop()


def scores_with(reward_store, calls, **options) -> list[list[float]]:
    scorer = RewardScorer(reward_store, device="cpu", window_s=0.01, **options)
    scorer.start()
    try:
        scorer.reload()
        return scorer.score(calls)[1]
    finally:
        scorer.stop()


def test_nothing_is_scored_before_a_model_is_loaded(scorer):
    with pytest.raises(NotLoaded):
        scorer.score([(PROMPT, ANSWERS)])


def test_scores_equal_the_rm_librarys_own(scorer, reward_store):
    assert scorer.reload() == ("", "v0")
    version, [rewards] = scorer.score([(PROMPT, ANSWERS)])
    info = reward_store.get("reward", "v0")
    model = ScalarHeadModel.from_pretrained(info.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    with torch.inference_mode():
        expected = read_rewards(model, tokenizer, [(PROMPT, a) for a in ANSWERS])
    assert version == "v0"
    assert rewards == pytest.approx(expected, abs=1e-5)


BEST_OF = [
    ([{"role": "user", "content": "Name a colour."}], ANSWERS),
    ([{"role": "user", "content": "Why is the sky blue?"}], ["Scattering.", "It is not."]),
    (
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        ["Hello.", "Hi!"],
    ),
]


def test_packed_and_padded_batches_score_the_same(reward_store):
    packed = scores_with(reward_store, BEST_OF, precision="fp32", packed=True)
    padded = scores_with(reward_store, BEST_OF, precision="fp32", packed=False)
    for got, want in zip(packed, padded, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_bf16_precision_stays_close_to_fp32(reward_store):
    exact = scores_with(reward_store, BEST_OF, precision="fp32")
    fast = scores_with(reward_store, BEST_OF, precision="bf16")
    assert fast != exact  # bf16 really ran
    for got, want in zip(fast, exact, strict=True):
        assert got == pytest.approx(want, abs=0.05)


def test_concurrent_batched_calls_score_as_one_at_a_time(scorer):
    scorer.reload()
    prompts = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(12)]
    alone = [scorer.score([(p, ANSWERS)])[1][0] for p in prompts]
    results: list = [None] * len(prompts)

    def call(i):
        results[i] = scorer.score([(prompts[i], ANSWERS)])[1][0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for got, want in zip(results, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_reload_switches_versions_and_is_idempotent(scorer):
    scorer.reload()
    _, [before] = scorer.score([(PROMPT, ANSWERS)])
    assert scorer.reload("v1") == ("v0", "v1")
    assert scorer.reload("v1") == ("v1", "v1")
    version, [after] = scorer.score([(PROMPT, ANSWERS)])
    assert version == "v1" and after != pytest.approx(before)


def test_reload_under_load_fails_no_call(scorer):
    scorer.reload()
    failures, versions = [], set()
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                versions.add(scorer.score([(PROMPT, ANSWERS)])[0])
            except Exception as error:  # any failure is a test failure
                failures.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    scorer.reload("v1")
    time.sleep(0.2)
    scorer.reload("v0")
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert versions == {"v0", "v1"}


def test_too_long_input_is_refused_with_its_position(scorer):
    scorer.reload()
    with pytest.raises(TooLong) as error:
        scorer.score([(PROMPT, ["fine"]), (PROMPT, ["ok", "word " * 400])])
    assert (error.value.call, error.value.answer, error.value.limit) == (1, 1, 256)


def test_a_passed_deadline_is_not_scored(scorer):
    scorer.reload()
    with pytest.raises(DeadlineExceeded):
        scorer.score([(PROMPT, ANSWERS)], deadline=time.monotonic() - 1)
