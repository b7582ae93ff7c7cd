"""Reward scoring without padding and with shared prefixes computed once.

:meth:`ScalarHeadModel.rewards` runs a padded batch: every row is as long as the
longest, and a prompt shared by several answers (best-of-n), or by every call (the
chat template's system block), is recomputed in every row. On a CPU, where a
forward pass is bound by matmul throughput, that waste ate the whole gain of
batching.

:class:`PackedScorer` runs the same weights on a *packed* batch instead. The
token-wise layers (projections, MLP, norms), nearly all of the work, see one
``(tokens, hidden)`` matrix holding each distinct token of the batch once.
Attention, the only step that mixes tokens, sees *segments*, each reading the
keys and values of its ancestors and then its own, causally:

    cached prefix (the chat template's fixed start, computed once per model)
      └─ prompt segment (once per distinct prompt in the batch)
           └─ answer segment (once per answer)

Causality makes this exact: a token's keys and values depend only on the tokens
before it, so a prompt's are the same whichever answer follows. Rewards equal
:meth:`ScalarHeadModel.rewards` up to float rounding (the tests hold them to it).
Only Llama-style decoders (rotary positions, pre-norm blocks, gated MLP,
grouped-query attention: SmolLM2, Llama, Mistral and Qwen2 without sliding
windows) are packed; :func:`supports_packing` says so, and callers use the padded
path for anything else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional

from services.rlhf.heads import ScalarHeadModel

PACKABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})

Item = tuple[Sequence[int], int]  # (input_ids, prompt_len)


def supports_packing(model: ScalarHeadModel) -> bool:
    """Whether :class:`PackedScorer` reproduces this model's forward pass."""
    config = model.config
    return (
        config.model_type in PACKABLE_MODEL_TYPES
        and getattr(config, "sliding_window", None) is None
        and hasattr(model.backbone, "rotary_emb")
        and hasattr(model.backbone, "layers")
    )


@dataclass(frozen=True)
class _Segment:
    """Packed tokens ``[start, end)``; attention reads ``ancestor_keys`` key rows first."""

    start: int
    end: int
    first_position: int
    ancestor_keys: tuple[tuple[int, int], ...]  # [start, end) row ranges of the key table

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class _Attention:
    """Where one segment's queries and keys sit, and which keys each query may see."""

    queries: slice  # of the packed tokens
    keys: tuple[tuple[int, int], ...]  # [start, end) row ranges of the key table
    mask: torch.Tensor  # (queries, keys) bool

    def gather(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This segment's keys and values, (kv heads, keys, head dim), from the key table."""
        if len(self.keys) == 1:
            ((first, last),) = self.keys
            return k[:, first:last], v[:, first:last]
        return (
            torch.cat([k[:, first:last] for first, last in self.keys], dim=1),
            torch.cat([v[:, first:last] for first, last in self.keys], dim=1),
        )


@dataclass(frozen=True)
class PackedBatch:
    """A batch of items laid out for :class:`PackedScorer`.

    The key table of a layer is the cached prefix's rows followed by the packed
    tokens' rows; each segment attends to a few ranges of it. Attention runs per
    segment: one call over all segments padded to the longest was slower on CPU,
    since prompts and answers differ in length several-fold.
    """

    token_ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (tokens,)
    attention: tuple[_Attention, ...]
    last_tokens: torch.Tensor  # (items,): the packed index each reward is read at
    item_segments: tuple[int, ...]  # (items,): the segment that ends at that token

    @property
    def tokens(self) -> int:
        return int(self.token_ids.shape[0])


class PackedScorer:
    """Scores (input_ids, prompt_len) items with ``model``; see the module docstring.

    ``shared_prefix`` is a token prefix that most inputs start with (the chat
    template's system block and the start of the user turn); its keys and values
    are computed here once and reused by every item that starts with it.
    """

    def __init__(self, model: ScalarHeadModel, shared_prefix: Sequence[int] = ()) -> None:
        if not supports_packing(model):
            raise ValueError(f"packed scoring does not support {model.config.model_type!r}")
        self.model = model
        self._backbone = model.backbone
        self._layers = list(self._backbone.layers[: model.config.num_hidden_layers])
        self._head_dim = self._layers[0].self_attn.head_dim
        self._prefix_ids: tuple[int, ...] = ()
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        if len(shared_prefix) > 0:
            self._cache_prefix(tuple(shared_prefix))

    @property
    def shared_prefix_len(self) -> int:
        return len(self._prefix_ids)

    @torch.inference_mode()
    def rewards(self, items: Sequence[Item]) -> list[float]:
        """The reward of each item, in order: the head's output at its last token."""
        if not items:
            return []
        batch = self.plan(items)
        hidden = self._forward(batch, self._prefix_kv, rewards_only=True)
        final = self._backbone.norm(hidden)
        with torch.autocast(final.device.type, enabled=False):
            return self.model.head(final.float()).squeeze(-1).tolist()

    def plan(self, items: Sequence[Item]) -> PackedBatch:
        """Segments for ``items``: the cached prefix and each distinct prompt appear once."""
        prefix = self._prefix_ids
        token_ids: list[int] = []
        segments: list[_Segment] = []
        prompt_keys: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}
        last_tokens: list[int] = []
        item_segments: list[int] = []
        prefix_rows = ((0, len(prefix)),)

        def add(ids: Sequence[int], first_position: int, ancestors) -> _Segment:
            segment = _Segment(len(token_ids), len(token_ids) + len(ids), first_position, ancestors)
            token_ids.extend(ids)
            segments.append(segment)
            return segment

        splits = [self._split(list(ids), prompt_len) for ids, prompt_len in items]
        answers_per_prompt = Counter(prompt for _, prompt, _ in splits)
        for shared, prompt, answer in splits:
            ancestors = prefix_rows if shared else ()
            if answers_per_prompt[prompt] == 1:
                # A prompt with one answer is one segment with it: fewer attention calls.
                segment = add(prompt[shared:] + answer, shared, ancestors)
            else:
                if prompt not in prompt_keys:
                    if len(prompt) > shared:
                        own = add(prompt[shared:], shared, ancestors)
                        rows = (len(prefix) + own.start, len(prefix) + own.end)
                        ancestors = _merge(ancestors + (rows,))
                    prompt_keys[prompt] = ancestors
                segment = add(answer, len(prompt), prompt_keys[prompt])
            last_tokens.append(segment.end - 1)
            item_segments.append(len(segments) - 1)
        return _lay_out(
            token_ids, segments, last_tokens, item_segments, len(prefix), self.model.device
        )

    def _split(
        self, ids: list[int], prompt_len: int
    ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """(tokens shared with the cached prefix, prompt tokens, answer tokens)."""
        if not ids:
            raise ValueError("an item has no tokens")
        prefix = self._prefix_ids
        starts_with_prefix = len(ids) > len(prefix) and tuple(ids[: len(prefix)]) == prefix
        shared = len(prefix) if starts_with_prefix else 0
        # The answer keeps at least one token: the reward is read at its last.
        split = max(shared, min(prompt_len, len(ids) - 1))
        return shared, tuple(ids[:split]), tuple(ids[split:])

    # ----- the forward pass -----------------------------------------------------

    def _cache_prefix(self, prefix: tuple[int, ...]) -> None:
        batch = _lay_out(
            list(prefix),
            [_Segment(0, len(prefix), 0, ())],
            [len(prefix) - 1],
            [0],
            0,
            self.model.device,
        )
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.inference_mode():
            self._forward(batch, [], rewards_only=False, keep=kept)
        self._prefix_ids, self._prefix_kv = prefix, kept

    def _forward(
        self,
        batch: PackedBatch,
        prefix_kv: list[tuple[torch.Tensor, torch.Tensor]],
        rewards_only: bool,
        keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Hidden states after the last block: (tokens, hidden), or with ``rewards_only``
        (items, hidden) at the tokens rewards are read at. ``keep`` collects each layer's
        (keys, values), (kv heads, tokens, head dim)."""
        hidden = self._backbone.embed_tokens(batch.token_ids)
        cos, sin = self._backbone.rotary_emb(hidden[None], batch.positions[None])
        rotary = cos[0, :, None, :], sin[0, :, None, :]  # (tokens, 1, head dim)
        for index, layer in enumerate(self._layers):
            cached = prefix_kv[index] if prefix_kv else None
            last = index == len(self._layers) - 1
            if last and rewards_only:
                return self._reward_block(layer, hidden, rotary, batch, cached)
            hidden = self._block(layer, hidden, rotary, batch, cached, keep)
        return hidden

    def _keys_values(self, layer, normed, rotary, cached, keep=None):
        """(kv heads, key table rows, head dim) keys and values: cached prefix, then packed."""
        attn = layer.self_attn
        tokens = normed.shape[0]
        k = _rotate(attn.k_proj(normed).view(tokens, -1, self._head_dim), rotary).transpose(0, 1)
        v = attn.v_proj(normed).view(tokens, -1, self._head_dim).transpose(0, 1)
        if keep is not None:
            keep.append((k.contiguous(), v.contiguous()))
        if cached is not None:
            k, v = torch.cat((cached[0], k), dim=1), torch.cat((cached[1], v), dim=1)
        return k, v

    def _block(self, layer, hidden, rotary, batch: PackedBatch, cached, keep) -> torch.Tensor:
        attn = layer.self_attn
        tokens = hidden.shape[0]
        normed = layer.input_layernorm(hidden)
        k, v = self._keys_values(layer, normed, rotary, cached, keep)
        # (heads, tokens, head dim)
        q = _rotate(attn.q_proj(normed).view(tokens, -1, self._head_dim), rotary).transpose(0, 1)
        out = torch.empty_like(q)
        for segment in batch.attention:
            keys, values = segment.gather(k, v)
            out[:, segment.queries] = _attend(
                attn, q[:, segment.queries], keys, values, segment.mask
            )
        hidden = hidden + attn.o_proj(out.transpose(0, 1).reshape(tokens, -1))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _reward_block(self, layer, hidden, rotary, batch: PackedBatch, cached) -> torch.Tensor:
        """The last block, for the reward tokens only: every token still gives keys and
        values, but queries, the output projection and the MLP run on one row per item."""
        attn = layer.self_attn
        normed = layer.input_layernorm(hidden)
        k, v = self._keys_values(layer, normed, rotary, cached)
        rows = batch.last_tokens
        row_rotary = rotary[0][rows], rotary[1][rows]
        q = _rotate(attn.q_proj(normed[rows]).view(len(rows), -1, self._head_dim), row_rotary)
        q = q.transpose(0, 1)
        out = torch.empty_like(q)
        for item, segment_index in enumerate(batch.item_segments):
            # An item's last token is its segment's last: it sees every key, so no mask.
            keys, values = batch.attention[segment_index].gather(k, v)
            out[:, item : item + 1] = _attend(attn, q[:, item : item + 1], keys, values, None)
        selected = hidden[rows] + attn.o_proj(out.transpose(0, 1).reshape(len(rows), -1))
        return selected + layer.mlp(layer.post_attention_layernorm(selected))


def _lay_out(
    token_ids: list[int],
    segments: list[_Segment],
    last_tokens: list[int],
    item_segments: list[int],
    prefix_len: int,
    device: torch.device,
) -> PackedBatch:
    attention = []
    for segment in segments:
        ancestors = sum(last - first for first, last in segment.ancestor_keys)
        own = (prefix_len + segment.start, prefix_len + segment.end)
        mask = torch.ones(segment.length, ancestors + segment.length, dtype=torch.bool)
        attention.append(
            _Attention(
                queries=slice(segment.start, segment.end),
                keys=_merge(segment.ancestor_keys + (own,)),
                mask=mask.tril(diagonal=ancestors).to(device),
            )
        )
    positions = [p for s in segments for p in range(s.first_position, s.first_position + s.length)]
    return PackedBatch(
        token_ids=torch.tensor(token_ids, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        attention=tuple(attention),
        last_tokens=torch.tensor(last_tokens, dtype=torch.long, device=device),
        item_segments=tuple(item_segments),
    )


def _attend(attn, queries, keys, values, mask) -> torch.Tensor:
    """Attention of (heads, queries, head dim) over (kv heads, keys, head dim)."""
    return functional.scaled_dot_product_attention(
        queries[None], keys[None], values[None], attn_mask=mask, scale=attn.scaling, enable_gqa=True
    )[0]


def _merge(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Row ranges with touching neighbours joined: fewer slices to concatenate per layer."""
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and merged[-1][1] == first:
            merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return tuple(merged)


def _rotate(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding (the rotate-half form the Llama family uses)."""
    cos, sin = rotary
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
