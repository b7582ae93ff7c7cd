"""The prefix cache: prompts that start like one read before skip those tokens in prefill,
and still get the tokens a whole prefill gives them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from prometheus_client import REGISTRY

from services.inference.engine.policies import PolicyHolder
from services.inference.engine.prefix_cache import BLOCK_TOKENS, PrefixCache
from services.inference.engine.sampling import SamplingParams
from services.inference.engine.scheduler import (
    GenerationStream,
    LoadedPolicy,
    Scheduler,
    _Request,
)

# The scheduler's decode steps take the fast step or the model's forward depending on the
# CPU: `make test` runs these on both (FLYWHEEL_CPU_FEATURES=baseline).
pytestmark = pytest.mark.cpu_paths

LAYERS, KV_HEADS, HEAD_DIM = 2, 1, 3


def kv_of(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values that name their token: every entry of column t is ids[t] (keys) or
    -ids[t] (values), so a gathered prefix shows which tokens it came from."""
    column = torch.tensor(ids, dtype=torch.float32)[None, None, :, None]
    keys = column.expand(LAYERS, KV_HEADS, len(ids), HEAD_DIM).clone()
    return keys, -keys


def stored(cache: PrefixCache, ids: list[int]) -> None:
    prefix = cache.match(ids)
    keys, values = kv_of(ids[prefix.length :])
    cache.store(ids, prefix, keys, values)


def test_a_prompt_finds_the_whole_blocks_it_shares_with_one_read_before():
    cache = PrefixCache(capacity_tokens=1000)
    first = list(range(100, 100 + 3 * BLOCK_TOKENS + 2))  # 3 whole blocks and 2 tokens
    stored(cache, first)
    assert cache.tokens == 3 * BLOCK_TOKENS
    # Shares 2 blocks and 3 tokens of the third: only whole blocks count.
    second = first[: 2 * BLOCK_TOKENS + 3] + [7, 8, 9, 10, 11, 12, 13, 14]
    prefix = cache.match(second)
    assert prefix.length == 2 * BLOCK_TOKENS
    keys, values = cache.gather([prefix], prefix.length)
    assert keys[0, 0, 0, :, 0].tolist() == first[: 2 * BLOCK_TOKENS]
    assert values[1, 0, 0, :, 0].tolist() == [-t for t in first[: 2 * BLOCK_TOKENS]]
    # A different first token: nothing, although the blocks after it are the same tokens.
    assert cache.match([1, *first[1:]]).length == 0


def test_a_prompt_read_before_whole_leaves_its_last_token_to_compute():
    cache = PrefixCache(capacity_tokens=1000)
    ids = list(range(2 * BLOCK_TOKENS))
    stored(cache, ids)
    # The pass needs one token to give the next-token logits: the last block is not used.
    assert cache.match(ids).length == BLOCK_TOKENS
    assert cache.match([*ids, 99]).length == 2 * BLOCK_TOKENS


def test_prefixes_of_different_lengths_gather_right_aligned_over_padding():
    cache = PrefixCache(capacity_tokens=1000)
    long = list(range(1, 2 * BLOCK_TOKENS + 1))
    stored(cache, [*long, 0])
    prefixes = [cache.match([*long, 5]), cache.match([*long[:BLOCK_TOKENS], 5]), cache.match([5])]
    assert [p.length for p in prefixes] == [2 * BLOCK_TOKENS, BLOCK_TOKENS, 0]
    keys, _ = cache.gather(prefixes, 2 * BLOCK_TOKENS)
    assert keys.shape == (LAYERS, 3, KV_HEADS, 2 * BLOCK_TOKENS, HEAD_DIM)
    assert keys[0, 0, 0, :, 0].tolist() == long
    assert keys[0, 1, 0, :, 0].tolist() == [0] * BLOCK_TOKENS + long[:BLOCK_TOKENS]
    assert not keys[:, 2].any()


def test_a_full_cache_drops_the_least_recently_used_blocks_last_ones_first():
    cache = PrefixCache(capacity_tokens=3 * BLOCK_TOKENS)
    a = list(range(10, 10 + 2 * BLOCK_TOKENS + 1))
    b = list(range(60, 60 + 2 * BLOCK_TOKENS + 1))
    stored(cache, a)
    stored(cache, b)  # 4 blocks for room for 3: one of a's goes
    assert cache.tokens == 3 * BLOCK_TOKENS
    # a's second block left before its first (which b's blocks do not need), so a still
    # finds its beginning and nothing stays stored that no prompt could reach.
    assert cache.match(a).length == BLOCK_TOKENS
    assert cache.match(b).length == 2 * BLOCK_TOKENS


def test_a_budget_too_small_for_a_block_keeps_no_cache(policy_store):
    config = PolicyHolder(policy_store, device="cpu", precision="fp32")
    config.reload()
    model_config = config.current.model.config
    assert PrefixCache.for_model(model_config, torch.float32, 0) is None
    cache = PrefixCache.for_model(model_config, torch.float32, 2**20)
    per_token = 2 * model_config.num_hidden_layers * model_config.num_key_value_heads * 4
    per_token *= model_config.hidden_size // model_config.num_attention_heads
    assert cache.capacity_tokens == 2**20 // per_token
    assert config.current.prefix_cache is None  # the holder's default: off


# ----- in the scheduler ---------------------------------------------------------------------


@pytest.fixture
def policy(policy_store) -> LoadedPolicy:
    holder = PolicyHolder(policy_store, device="cpu", precision="fp32", prefix_cache_mb=4)
    holder.reload()
    assert holder.current.prefix_cache is not None
    return holder.current


@pytest.fixture
def scheduler():
    running = Scheduler(max_batch_size=8)
    running.start()
    yield running
    running.stop()


def greedy(scheduler: Scheduler, policy: LoadedPolicy, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy tokens of each prompt, all submitted at once (one prefill pass)."""
    streams = []
    for prompt in prompts:
        stream = GenerationStream(None)
        scheduler.submit(policy, prompt, SamplingParams(max_new_tokens=8, ignore_eos=True), stream)
        streams.append(stream)
    answers = []
    for stream in streams:
        tokens: list[int] = []
        while True:
            event = stream.next_blocking(timeout=60)
            tokens.append(event.id)
            if event.finished is not None:
                break
        answers.append(tokens)
    return answers


def hit_tokens() -> float:
    return REGISTRY.get_sample_value("flywheel_engine_prefix_cache_hit_tokens") or 0.0


def test_prompts_starting_alike_skip_the_shared_part_and_get_the_same_tokens(policy, scheduler):
    system = list(range(20, 20 + 3 * BLOCK_TOKENS))  # a "system turn" of 3 blocks
    first_round = [system + [40, 41, 42], system + [50, 51, 52, 53, 54]]
    uncached = dataclasses.replace(policy, prefix_cache=None)
    # A mixed batch: a prompt read before, one sharing only the system turn (and a block
    # more than the cached part of the other: right-aligned over padding), one sharing
    # nothing, one shorter than a block.
    second_round = [
        first_round[0],
        system + list(range(60, 60 + BLOCK_TOKENS + 4)),
        list(range(70, 90)),
        [91, 92],
    ]
    expected = greedy(scheduler, uncached, first_round + second_round)

    before = hit_tokens()
    assert greedy(scheduler, policy, first_round) == expected[:2]
    assert hit_tokens() == before  # nothing stored yet: both prefilled whole
    assert greedy(scheduler, policy, second_round) == expected[2:]
    # The repeated prompt found the system turn (3 blocks, its 3 own tokens are less than a
    # block); the second prompt found the system turn too; the other two nothing.
    assert hit_tokens() - before == 2 * 3 * BLOCK_TOKENS
    assert policy.prefix_cache.tokens > 3 * BLOCK_TOKENS  # the second's own block is kept


def test_a_cached_prefill_gives_the_logits_of_a_whole_one(policy):
    prompts = [list(range(30, 30 + 2 * BLOCK_TOKENS + 5)), list(range(30, 30 + BLOCK_TOKENS + 1))]
    scheduler = Scheduler()

    def logits_of(loaded: LoadedPolicy) -> torch.Tensor:
        requests = [
            _Request(loaded, prompt, SamplingParams(max_new_tokens=1), GenerationStream(None))
            for prompt in prompts
        ]
        return scheduler._prefill_pass([scheduler._new_row(r) for r in requests])[1]

    whole = logits_of(dataclasses.replace(policy, prefix_cache=None))
    logits_of(policy)  # stores the blocks
    assert policy.prefix_cache.match(prompts[0]).length == 2 * BLOCK_TOKENS
    cached = logits_of(policy)
    torch.testing.assert_close(cached, whole, rtol=1e-4, atol=1e-4)


def test_a_conversation_s_next_turn_finds_the_previous_answer_too(policy, scheduler):
    first_turn = list(range(20, 20 + 2 * BLOCK_TOKENS + 4))  # 2 whole blocks and 4 tokens
    [answer] = greedy(scheduler, policy, [first_turn])  # 8 tokens
    # The next turn repeats the whole first turn, its answer included, then adds its own.
    next_turn = first_turn + answer + [90, 91, 92]
    uncached = dataclasses.replace(policy, prefix_cache=None)
    [expected] = greedy(scheduler, uncached, [next_turn])

    before = hit_tokens()
    assert greedy(scheduler, policy, [next_turn]) == [expected]
    # The prompt and all of the answer but its last token (chosen, never fed, so it has no
    # keys) were kept: 20 + 7 = 27 tokens, 3 whole blocks; the prompt alone held 2.
    assert hit_tokens() - before == 3 * BLOCK_TOKENS
