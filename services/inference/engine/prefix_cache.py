"""Prompt beginnings the engine has already read, kept so that a prompt starting the same way
skips them (automatic prefix caching, as vLLM, SGLang and llama.cpp's server do).

Chat prompts share long beginnings: every chat of a deployment starts with the chat template's
system turn (24 of the ~40 tokens of a one-line question to SmolLM2), and each turn of a
conversation repeats all the turns before it. Their keys and values depend only on the tokens
before them, so the prefill pass can start from a stored copy and compute only the rest.

Prompts are cut into blocks of ``block_tokens``; a block is stored under a key chained from
all the blocks before it, so a hit on block k means the whole prompt up to the end of block k
matched (each hit is checked token by token, never trusted to the hash). Blocks are evicted
least recently used first once the cache holds more than its token budget; a prompt's blocks
are marked used from its last to its first, so a block always leaves before the blocks it
continues and no block is left unreachable. A cache belongs
to one loaded model version: other weights give other keys and values.

A prompt served from the cache gets the same logits as one prefilled whole up to rounding
(the stored part was computed in another pass, whose matrix kernels may block differently),
the same kind of difference that batching with other prompts already makes.

Only the engine's scheduler thread uses a cache, so it takes no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLOCK_TOKENS = 8


@dataclass(frozen=True, eq=False)
class _Block:
    key: int
    tokens: tuple[int, ...]
    parent: _Block | None
    keys: torch.Tensor  # (layers, kv heads, block tokens, head dim)
    values: torch.Tensor


@dataclass(frozen=True)
class CachedPrefix:
    """The stored blocks a prompt starts with (possibly none), in order."""

    blocks: tuple[_Block, ...] = ()

    @property
    def length(self) -> int:
        return sum(len(block.tokens) for block in self.blocks)


NO_PREFIX = CachedPrefix()


class PrefixCache:
    def __init__(self, capacity_tokens: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be positive")
        self.capacity_tokens = capacity_tokens
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[int, _Block] = OrderedDict()

    @classmethod
    def for_model(cls, config, dtype: torch.dtype, budget_bytes: int) -> PrefixCache | None:
        """A cache holding at most ``budget_bytes`` of keys and values of a model with this
        config; None when the budget holds less than one block."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize
        capacity = budget_bytes // per_token
        return cls(capacity) if capacity >= BLOCK_TOKENS else None

    @property
    def tokens(self) -> int:
        """Tokens held now."""
        return len(self._blocks) * self.block_tokens

    def match(self, ids: Sequence[int]) -> CachedPrefix:
        """The longest run of stored blocks ``ids`` starts with, leaving at least one token of
        ``ids`` to compute (the prefill pass needs it for the next-token logits)."""
        blocks: list[_Block] = []
        parent: _Block | None = None
        size = self.block_tokens
        for start in range(0, len(ids) - size, size):
            block = self._find(parent, tuple(ids[start : start + size]))
            if block is None:
                break
            blocks.append(block)
            parent = block
        self._mark_used(blocks)
        return CachedPrefix(tuple(blocks))

    def gather(
        self, prefixes: Sequence[CachedPrefix], width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``prefixes`` as one (layers, rows, kv heads, width, head dim)
        tensor each, every row's prefix ending at column ``width`` (zeros before it: masked
        padding). ``width`` is at least the longest prefix."""
        first = next(p.blocks[0] for p in prefixes if p.blocks)
        layers, kv_heads, _, head_dim = first.keys.shape
        shape = (layers, len(prefixes), kv_heads, width, head_dim)
        keys = first.keys.new_zeros(shape)
        values = first.values.new_zeros(shape)
        for row, prefix in enumerate(prefixes):
            if prefix.blocks:
                start = width - prefix.length
                keys[:, row, :, start:] = torch.cat([b.keys for b in prefix.blocks], dim=2)
                values[:, row, :, start:] = torch.cat([b.values for b in prefix.blocks], dim=2)
        return keys, values

    def store(
        self,
        ids: Sequence[int],
        prefix: CachedPrefix,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """Keep the whole blocks of prompt ``ids`` after its cached ``prefix``; ``keys`` and
        ``values`` are (layers, kv heads, tokens, head dim) for ``ids[prefix.length:]``."""
        size = self.block_tokens
        chain = list(prefix.blocks)
        parent = chain[-1] if chain else None
        for start in range(prefix.length, len(ids) - size + 1, size):
            tokens = tuple(ids[start : start + size])
            block = self._find(parent, tokens)
            if block is None:
                offset = start - prefix.length
                block = _Block(
                    _chain_key(parent, tokens),
                    tokens,
                    parent,
                    keys[:, :, offset : offset + size].clone(),
                    values[:, :, offset : offset + size].clone(),
                )
                self._blocks[block.key] = block
            chain.append(block)
            parent = block
        self._mark_used(chain)
        while self.tokens > self.capacity_tokens:
            self._blocks.popitem(last=False)

    def _find(self, parent: _Block | None, tokens: tuple[int, ...]) -> _Block | None:
        block = self._blocks.get(_chain_key(parent, tokens))
        if block is None or block.tokens != tokens or block.parent is not parent:
            return None  # absent, or another chain's block under a colliding hash
        return block

    def _mark_used(self, chain: Sequence[_Block]) -> None:
        # Last block first: the blocks a block continues end up more recently used than it.
        for block in reversed(chain):
            self._blocks.move_to_end(block.key)

    def new_blocks(self, ids: Sequence[int], prefix: CachedPrefix) -> int:
        """How many whole blocks of ``ids`` lie past ``prefix`` (what ``store`` would keep)."""
        return max(0, (len(ids) - prefix.length) // self.block_tokens)


def _chain_key(parent: _Block | None, tokens: tuple[int, ...]) -> int:
    # The parent's key stands for every token before it.
    return hash((parent.key if parent is not None else 0, tokens))
