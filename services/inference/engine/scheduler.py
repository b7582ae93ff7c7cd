"""Continuous batching: concurrent requests share every forward pass.

One thread owns the model. Each turn of its loop it (1) drops requests whose client went
away, (2) admits waiting requests while the batch has room, running their prompts
together in one prefill pass and joining their caches to the running batch, and (3) runs
one decode step for every running request. A request finishes at its end-of-sequence
token, a stop sequence or its token limit, and leaves the batch at once; nobody waits
for the longest request of a batch, as with static batching.

Isolation: one request's trouble stays its own. Preparing a request (its sampler, its
seed), choosing or detokenizing its token fails that request alone; a prefill pass that
fails is retried one request at a time, so a poisonous prompt fails alone too. Only a
decode pass that fails takes down the rows that shared it (nothing in it belongs to one
row). The running count is recomputed from the batches after every step, so no path can
leak a slot, and ``stalled()`` tells a watchdog when work waits but the loop has not
turned for a while (a hung kernel, a deadlock).

Hot swap: a request is bound to the policy version serving when it arrived. Rows of
different versions never share a pass; the loop steps one batch per version, so requests
in flight finish on the old weights while new ones start on the new, and the old version
is freed when its last request leaves.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from services.inference.engine import metrics
from services.inference.engine.detokenize import IncrementalDecoder
from services.inference.engine.kv_cache import BatchCache
from services.inference.engine.prefix_cache import NO_PREFIX, CachedPrefix, PrefixCache
from services.inference.engine.sampling import SamplingParams, TokenChooser, greedy_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # identity: batches are keyed by the loaded object
class LoadedPolicy:
    version: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: frozenset[int]
    loaded_at: datetime
    # The packed fused decode step (same tokens, fewer and faster kernels); None: the
    # model's own forward decodes too.
    decode_step: Callable[..., torch.Tensor] | None = None
    # Keys and values of prompt beginnings read before, for this version's weights only.
    prefix_cache: PrefixCache | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class Finished:
    reason: str  # "length", "eos_token" or "stop_sequence", as TGI names them
    generated_tokens: int
    generated_text: str  # special tokens left out; ends with the stop sequence if one hit
    stop_sequence: str | None
    seed: int | None
    input_length: int
    queue_s: float
    inference_s: float


@dataclass(frozen=True)
class Token:
    """A generated token; the last one of a request carries how it ``finished``, so a
    stream can send it together with the final text without waiting for another event."""

    id: int
    text: str
    logprob: float
    special: bool
    finished: Finished | None = None


@dataclass(frozen=True)
class Failed:
    message: str


class Overloaded(Exception):
    """More requests than ``max_concurrent_requests`` are queued or running."""


class GenerationStream:
    """A request's events (``Token``s, the last with ``finished`` set; or ``Failed``), read
    from an asyncio loop (``await next()``) or a plain thread (``next_blocking()``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._queue: asyncio.Queue | queue.Queue = asyncio.Queue() if loop else queue.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating (the client went away); the engine drops the row at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def next(self):
        return await self._queue.get()

    def next_blocking(self, timeout: float | None = None):
        return self._queue.get(timeout=timeout)

    def emit(self, event) -> None:
        if self._loop is None:
            self._queue.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the caller's loop is closed: nobody listens any more
            self.cancel()


@dataclass(eq=False)
class _Request:
    policy: LoadedPolicy
    input_ids: list[int]
    params: SamplingParams
    stream: GenerationStream
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Row:
    request: _Request
    chooser: TokenChooser
    decoder: IncrementalDecoder
    admitted_at: float
    position: int  # position id of the next token fed in
    answer: list[int] = field(default_factory=list)  # the tokens chosen so far
    last_token_at: float = 0.0  # perf_counter() when its previous token was chosen

    @property
    def generated(self) -> int:
        return len(self.answer)


@dataclass(eq=False)
class _Batch:
    policy: LoadedPolicy
    rows: list[_Row]
    cache: BatchCache
    mask: torch.Tensor  # (rows, cache length): 1 where a row has a real token


class Scheduler:
    def __init__(
        self,
        *,
        max_batch_size: int = 16,
        max_concurrent_requests: int = 128,
        max_prefill_tokens: int = 4096,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_concurrent_requests = max_concurrent_requests
        self.max_prefill_tokens = max_prefill_tokens
        self._waiting: deque[_Request] = deque()
        self._batches: dict[LoadedPolicy, _Batch] = {}
        self._lock = threading.Condition()
        self._running = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # When the loop last finished a step or found nothing to do (monotonic seconds).
        self._last_progress = time.monotonic()

    # ----- the caller's side ----------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queue_size(self) -> int:
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        return self._running

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stalled(self, after_s: float) -> bool:
        """True when requests are queued or running but the loop has made no step for
        ``after_s`` seconds: the engine is wedged and should be restarted."""
        with self._lock:
            busy = bool(self._waiting) or self._running > 0
            return busy and time.monotonic() - self._last_progress > after_s

    def submit(
        self,
        policy: LoadedPolicy,
        input_ids: list[int],
        params: SamplingParams,
        stream: GenerationStream,
    ) -> None:
        """Queue a request; its events go to ``stream``. Raises Overloaded when full."""
        with self._lock:
            if len(self._waiting) + self._running >= self.max_concurrent_requests:
                raise Overloaded(
                    f"{self.max_concurrent_requests} requests are already queued or running"
                )
            if not self._waiting and not self._running:
                self._last_progress = time.monotonic()  # idle until now, not stuck
            self._waiting.append(_Request(policy, list(input_ids), params, stream))
            metrics.QUEUE_SIZE.set(len(self._waiting))
            self._lock.notify_all()

    # ----- the engine thread ----------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._batches:
                    self._last_progress = time.monotonic()
                    self._lock.wait()
                if self._stopping:
                    self._fail_all("the engine is shutting down")
                    return
            try:
                self._admit()
                for batch in list(self._batches.values()):
                    self._decode(batch)
            except Exception:  # a bug must not kill the loop: fail what ran, keep serving
                log.exception("engine step failed")
                self._fail_all("generation failed; see the engine log")
            finally:
                self._count_running()

    def _count_running(self) -> None:
        """The running count from the batches themselves: whatever failed, no slot leaks."""
        running = sum(len(batch.rows) for batch in self._batches.values())
        with self._lock:
            self._running = running
            self._last_progress = time.monotonic()
        metrics.BATCH_SIZE.set(running)

    def _admit(self) -> None:
        with self._lock:
            # Requests whose client left stop holding a place in the queue at once, even
            # while the batch is full (they count toward max_concurrent_requests).
            live = [r for r in self._waiting if not r.stream.cancelled]
            metrics.CANCELLED.inc(len(self._waiting) - len(live))
            self._waiting = deque(live)
            room = self.max_batch_size - self._running
            admitted: list[_Request] = []
            tokens = 0
            while self._waiting and room > 0:
                request = self._waiting[0]
                if admitted and (
                    request.policy is not admitted[0].policy
                    or tokens + len(request.input_ids) > self.max_prefill_tokens
                ):
                    break
                admitted.append(self._waiting.popleft())
                tokens += len(request.input_ids)
                room -= 1
            self._running += len(admitted)
            metrics.QUEUE_SIZE.set(len(self._waiting))
        if admitted:
            self._prefill(admitted)

    def _prefill(self, requests: list[_Request]) -> None:
        started = time.perf_counter()
        rows = [row for row in map(self._new_row, requests) if row is not None]
        if not rows:
            return
        try:
            new, logits = self._prefill_pass(rows)
        except Exception:
            log.exception("prefill of %d requests failed", len(rows))
            if len(rows) == 1:
                self._fail_rows(rows, "generation failed while reading the prompt")
                return
            # One of them may be the cause: give each its own pass, so only it fails.
            for row in rows:
                self._prefill([row.request])
            return
        metrics.observe_batch("prefill", time.perf_counter() - started, len(rows))
        self._emit_tokens(new, logits)
        running = self._batches.get(new.policy)
        if running is None:
            if new.rows:
                self._batches[new.policy] = new
        elif new.rows:
            self._batches[new.policy] = _join(running, new)

    def _new_row(self, request: _Request) -> _Row | None:
        """The request's decoding state; on failure the request alone fails."""
        try:
            seed = request.params.seed
            if seed is None:
                seed = secrets.randbits(63)
            chooser = TokenChooser(request.params, seed, torch.tensor(request.input_ids))
            decoder = IncrementalDecoder(request.policy.tokenizer)
        except Exception as exc:
            log.warning("request refused while preparing it: %s", exc)
            request.stream.emit(Failed(f"the request could not be prepared: {exc}"))
            return None
        return _Row(
            request,
            chooser,
            decoder,
            admitted_at=time.perf_counter(),
            position=len(request.input_ids),
        )

    def _prefill_pass(self, rows: list[_Row]) -> tuple[_Batch, torch.Tensor]:
        """The prompts of ``rows`` in one pass: their batch and last logits.

        Each row's cached prefix (if the policy keeps a prefix cache) sits right-aligned in
        the first columns of the batch's cache; the rest of its prompt, left-padded, follows
        and is all the pass computes. Row i's columns: padding, its prefix, padding, the rest.
        """
        policy = rows[0].request.policy
        prompts = [row.request.input_ids for row in rows]
        prefix_cache = policy.prefix_cache
        prefixes = [prefix_cache.match(p) if prefix_cache else NO_PREFIX for p in prompts]
        cached = max(prefix.length for prefix in prefixes)
        rests = [prompt[prefix.length :] for prompt, prefix in zip(prompts, prefixes, strict=True)]
        width = max(len(rest) for rest in rests)
        ids = torch.full((len(rows), width), 0, dtype=torch.long)
        mask = torch.zeros((len(rows), cached + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for index, (rest, prefix) in enumerate(zip(rests, prefixes, strict=True)):
            ids[index, width - len(rest) :] = torch.tensor(rest)
            mask[index, cached - prefix.length : cached] = 1
            mask[index, cached + width - len(rest) :] = 1
            positions[index, width - len(rest) :] = torch.arange(
                prefix.length, prefix.length + len(rest)
            )
        if cached:
            keys, values = (t.to(policy.device) for t in prefix_cache.gather(prefixes, cached))
            cache = BatchCache.starting_with(keys, values, width)
            metrics.PREFIX_CACHE_HIT_TOKENS.inc(sum(prefix.length for prefix in prefixes))
        else:
            cache = BatchCache(policy.model.config.num_hidden_layers)
        logits = self._forward(policy, ids, mask, positions, cache)
        batch = _Batch(policy, rows, cache, mask)
        for index, (prompt, prefix) in enumerate(zip(prompts, prefixes, strict=True)):
            _keep_in_prefix_cache(batch, index, prompt, prefix)
        return batch, logits

    def _decode(self, batch: _Batch) -> None:
        self._drop_cancelled(batch)
        if not batch.rows:
            self._batches.pop(batch.policy, None)
            return
        started = time.perf_counter()
        tokens = torch.tensor([[row.answer[-1]] for row in batch.rows])
        positions = torch.tensor([[row.position] for row in batch.rows])
        for row in batch.rows:
            row.position += 1
        batch.mask = torch.cat((batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long)), 1)
        step = batch.policy.decode_step
        try:
            if step is None:
                logits = self._forward(batch.policy, tokens, batch.mask, positions, batch.cache)
            else:
                logits = step(tokens, positions, batch.mask, batch.cache)
        except Exception:
            # The rows shared this pass and nothing in it belongs to one of them: they fail
            # together; the queue and other versions' batches go on.
            log.exception("decode step failed")
            self._fail_rows(batch.rows, "generation failed during decoding")
            self._batches.pop(batch.policy, None)
            return
        metrics.observe_batch("decode", time.perf_counter() - started, len(batch.rows))
        self._emit_tokens(batch, logits)
        if not batch.rows:
            self._batches.pop(batch.policy, None)

    def _forward(self, policy, ids, mask, positions, cache) -> torch.Tensor:
        device = policy.device
        with torch.inference_mode():
            out = policy.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :].float().cpu()

    def _emit_tokens(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Choose each row's next token, stream it, and remove the rows that finished (or
        failed: a row whose sampling or detokenizing raises fails alone)."""
        keep: list[int] = []
        picked = self._pick_greedy(batch, logits)
        for index, row in enumerate(batch.rows):
            try:
                event = self._next_token(batch.policy, row, logits[index], picked.get(index))
            except Exception as exc:
                log.warning("request failed while choosing its token: %s", exc)
                self._fail_rows([row], f"generation failed while sampling: {exc}")
                continue
            row.request.stream.emit(event)
            if event.finished is None:
                keep.append(index)
            else:
                self._remember(batch, index)
        if len(keep) < len(batch.rows):
            _keep_rows(batch, keep)
            batch.rows = [batch.rows[i] for i in keep]

    @staticmethod
    def _remember(batch: _Batch, index: int) -> None:
        """Keep a finished row's prompt and answer in the prefix cache: a conversation's next
        turn starts with them. Its last token was only chosen, never fed, so it has no keys."""
        prefix_cache = batch.policy.prefix_cache
        if prefix_cache is not None:
            row = batch.rows[index]
            sequence = row.request.input_ids + row.answer[:-1]
            _keep_in_prefix_cache(batch, index, sequence, prefix_cache.match(sequence))

    @staticmethod
    def _pick_greedy(batch: _Batch, logits: torch.Tensor) -> dict[int, tuple[int, float]]:
        """(token, logprob) by row index for the greedy rows, chosen all at once; on any
        failure none (each row then chooses alone, and fails alone)."""
        rows = [index for index, row in enumerate(batch.rows) if row.chooser.greedy]
        if not rows:
            return {}
        try:
            tokens, logprobs = greedy_tokens(logits[rows])
        except Exception:
            log.exception("choosing the greedy rows' tokens together failed")
            return {}
        return dict(zip(rows, zip(tokens, logprobs, strict=True), strict=True))

    def _next_token(
        self,
        policy: LoadedPolicy,
        row: _Row,
        logits: torch.Tensor,
        picked: tuple[int, float] | None,
    ) -> Token:
        """``picked``: the (token, logprob) chosen for a greedy row with the whole batch."""
        if picked is None:
            token, logprob = row.chooser.choose(logits)
        else:
            token, logprob = picked
            row.chooser.accept(token)
        row.answer.append(token)
        _observe_token_latency(row)
        special = row.decoder.is_special(token)
        text = row.decoder.token_text(token) if special else row.decoder.add(token)
        reason = self._finish_reason(policy, row, token)
        finished = None if reason is None else self._finished(row, *reason)
        return Token(token, text, logprob, special, finished)

    def _finish_reason(self, policy: LoadedPolicy, row: _Row, token: int):
        if token in policy.eos_token_ids and not row.request.params.ignore_eos:
            return "eos_token", None
        text = row.decoder.text
        for stop in row.request.params.stop:
            at = text.find(stop, max(0, len(text) - len(stop) - 64))
            if at >= 0:
                row.decoder.text = text[: at + len(stop)]
                return "stop_sequence", stop
        if row.generated >= row.request.params.max_new_tokens:
            return "length", None
        return None

    def _finished(self, row: _Row, reason: str, stop: str | None) -> Finished:
        request = row.request
        return Finished(
            reason=reason,
            generated_tokens=row.generated,
            generated_text=row.decoder.text,
            stop_sequence=stop,
            seed=row.chooser.seed if request.params.samples else None,
            input_length=len(request.input_ids),
            queue_s=row.admitted_at - request.queued_at,
            inference_s=time.perf_counter() - row.admitted_at,
        )

    def _drop_cancelled(self, batch: _Batch) -> None:
        keep = [i for i, row in enumerate(batch.rows) if not row.request.stream.cancelled]
        if len(keep) == len(batch.rows):
            return
        metrics.CANCELLED.inc(len(batch.rows) - len(keep))
        _keep_rows(batch, keep)
        batch.rows = [batch.rows[i] for i in keep]

    @staticmethod
    def _fail_rows(rows: list[_Row], message: str) -> None:
        for row in rows:
            row.request.stream.emit(Failed(message))

    def _fail_all(self, message: str) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for request in waiting:
            request.stream.emit(Failed(message))
        for batch in list(self._batches.values()):
            self._fail_rows(batch.rows, message)
        self._batches.clear()


def _observe_token_latency(row: _Row) -> None:
    """Time to first token for the token chosen after prefill, counted from when the request
    was queued (the client waits through the queue too); time since the previous token for
    each token after it."""
    now = time.perf_counter()
    if row.generated == 1:
        metrics.TIME_TO_FIRST_TOKEN.observe(now - row.request.queued_at)
    else:
        metrics.INTER_TOKEN_LATENCY.observe(now - row.last_token_at)
    row.last_token_at = now


def _keep_in_prefix_cache(
    batch: _Batch, index: int, sequence: list[int], stored: CachedPrefix
) -> None:
    """Store the whole blocks of row ``index``'s ``sequence`` past its ``stored`` prefix.
    The row's tokens are its cache columns its mask marks, in order, wherever padding put
    them. A failure only costs a later prompt some time, so it is logged, not raised."""
    prefix_cache = batch.policy.prefix_cache
    if prefix_cache is None or not prefix_cache.new_blocks(sequence, stored):
        return
    try:
        columns = batch.mask[index].nonzero().flatten()[stored.length :]
        keys, values = batch.cache.row_columns(index, columns.to(batch.policy.device))
        prefix_cache.store(sequence, stored, keys, values)
    except Exception:
        log.exception("keeping a row's tokens in the prefix cache failed")
    metrics.PREFIX_CACHE_TOKENS.set(prefix_cache.tokens)


def _keep_rows(batch: _Batch, keep: list[int]) -> None:
    if not keep:
        batch.mask = batch.mask[:0]
        return
    rows = torch.tensor(keep, dtype=torch.long)
    batch.cache.keep_rows(rows.to(batch.policy.device))
    batch.mask = batch.mask[rows]
    # Columns no remaining row attends (the padding of a longer prompt that finished).
    used = batch.mask.any(dim=0).nonzero()
    unused_prefix = int(used[0]) if len(used) else 0
    if unused_prefix:
        batch.cache.drop_leading(unused_prefix)
        batch.mask = batch.mask[:, unused_prefix:]


def _join(running: _Batch, new: _Batch) -> _Batch:
    length = max(running.mask.shape[1], new.mask.shape[1])

    def pad(mask: torch.Tensor) -> torch.Tensor:
        missing = length - mask.shape[1]
        return torch.cat((torch.zeros((mask.shape[0], missing), dtype=mask.dtype), mask), 1)

    return _Batch(
        running.policy,
        running.rows + new.rows,
        BatchCache.join(running.cache, new.cache),
        torch.cat((pad(running.mask), pad(new.mask))),
    )
