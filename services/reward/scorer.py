"""The reward model, served: which version is loaded, hot reload, and scoring through the
dynamic batcher.

The model is :class:`services.rlhf.heads.ScalarHeadModel` and prompts and answers are encoded
with :mod:`services.rlhf.tokenization`, exactly as the trainer scores them, so a trained RM
gives the same rewards here as in training. Batches run packed
(:mod:`services.rlhf.packed_scoring`: no padding, the chat template's fixed start and each
call's prompt computed once) for the Llama family, padded otherwise. ``precision`` ``bf16``
runs the matmuls in bf16 under autocast (norms, residuals and the head stay fp32), about
twice as fast where the hardware has bf16 units; ``fp32`` gives the library's scores to
float rounding. Every call is admitted under the version serving
at that moment and batched only with calls of the same version: a reload loads the new
version beside the old, switches new calls to it, and lets calls in flight finish on the old.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from services.common.model_host import ModelHost
from services.common.model_loading import (
    default_dtype,
    load_tokenizer,
    pick_device,
    resolve_precision,
)
from services.common.registry import ModelRegistry, VersionInfo
from services.reward import metrics
from services.reward.batcher import DeadlineExceeded, DynamicBatcher
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.packed_scoring import PackedScorer, supports_packing
from services.rlhf.reward_reading import reward_input
from services.rlhf.tokenization import Encoded, Message, chat_template_prefix, pad

log = logging.getLogger(__name__)

ROLE = "reward"


class NotLoaded(Exception):
    """No reward model version is loaded yet."""


class TooLong(ValueError):
    """A prompt + answer is longer than the service scores."""

    def __init__(self, call: int, answer: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"call {call}, answer {answer}: prompt + answer are {tokens} tokens; at most {limit}"
        )
        self.call, self.answer, self.tokens, self.limit = call, answer, tokens, limit


@dataclass(frozen=True, eq=False)  # identity equality: the batcher keys batches by it
class ServedModel:
    version: str
    model: ScalarHeadModel
    tokenizer: PreTrainedTokenizerBase
    loaded_at: datetime
    packed: PackedScorer | None  # None: this architecture is scored padded


class RewardScorer:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        device: str = "auto",
        precision: str = "auto",
        packed: bool = True,
        max_tokens: int = 1024,
        max_batch: int = 32,
        window_s: float = 0.005,
        max_queue: int = 512,
    ) -> None:
        self._registry = registry
        self._device = pick_device(device)
        self._dtype = default_dtype(self._device)
        self.precision = resolve_precision(precision, self._device)
        self._packed = packed
        self.max_tokens = max_tokens
        self._host = ModelHost(
            registry,
            ROLE,
            self._load,
            metrics.SERVING,
            describe=lambda served: (
                f"{self.precision}, {'packed' if served.packed else 'padded batches'}"
            ),
        )
        self._batcher = DynamicBatcher(
            self._run_batch,
            max_batch=max_batch,
            window_s=window_s,
            max_queue=max_queue,
            name="reward-batcher",
        )

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def current(self) -> ServedModel | None:
        return self._host.current

    def start(self) -> None:
        self._batcher.start()

    def stop(self) -> None:
        self._batcher.stop()

    def reload(self, version: str = "") -> tuple[str, str]:
        """Serve ``version`` (default: the promoted one); (previous, current) version names.

        Registry errors (unknown or corrupt version) propagate, and the old version keeps
        serving.
        """
        return self._host.reload(version)

    def _load(self, info: VersionInfo) -> ServedModel:
        model = ScalarHeadModel.from_pretrained(
            info.path, dtype=self._dtype, device=str(self._device)
        )
        model.eval()
        tokenizer = load_tokenizer(info.path)
        packed = None
        if self._packed and supports_packing(model):
            with self._autocast():
                packed = PackedScorer(model, chat_template_prefix(tokenizer))
        metrics.RELOADS.inc()
        return ServedModel(info.version, model, tokenizer, datetime.now(UTC), packed)

    def _encode(
        self, served: ServedModel, prompt: Sequence[Message], answers: Sequence[str], call: int
    ) -> list[Encoded]:
        encoded = []
        for index, answer in enumerate(answers):
            # Encoded without truncation: an over-long input is refused, not silently cut.
            item = reward_input(served.tokenizer, prompt, answer, 1 << 30)
            if len(item.input_ids) > self.max_tokens:
                raise TooLong(call, index, len(item.input_ids), self.max_tokens)
            encoded.append(item)
        return encoded

    def score(
        self,
        calls: Sequence[tuple[Sequence[Message], Sequence[str]]],
        deadline: float | None = None,
    ) -> tuple[str, list[list[float]]]:
        """Rewards for each (prompt, answers) call, all scored by one version: (version, rewards).

        Raises NotLoaded, TooLong, batcher.Overloaded or batcher.DeadlineExceeded.
        """
        served = self._host.current
        if served is None:
            raise NotLoaded("no reward model is loaded yet")
        items, sizes = [], []
        for call, (prompt, answers) in enumerate(calls):
            items += self._encode(served, prompt, answers, call)
            sizes.append(len(answers))
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("the deadline passed before scoring started")
        future = self._batcher.submit(items, key=served, deadline=deadline)
        try:
            rewards = future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise DeadlineExceeded("deadline passed while scoring") from None
        grouped, start = [], 0
        for size in sizes:
            grouped.append(rewards[start : start + size])
            start += size
        return served.version, grouped

    def _autocast(self):
        return torch.autocast(
            self._device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def _run_batch(self, served: ServedModel, items: list[Encoded]) -> list[float]:
        metrics.BATCH_SIZE.observe(len(items))
        metrics.ANSWERS_SCORED.inc(len(items))
        metrics.QUEUE_ITEMS.set(self._batcher.queued_items)
        with torch.inference_mode(), self._autocast():
            if served.packed is not None:
                return served.packed.rewards([(i.input_ids, i.prompt_len) for i in items])
            device = served.model.device
            ids, mask = pad([i.input_ids for i in items], served.tokenizer.pad_token_id)
            return served.model.rewards(ids.to(device), mask.to(device)).float().tolist()
