"""GPU check: serving, one reward-model step and one PPO iteration on one device, one run.

Run on a machine with an NVIDIA GPU and a CUDA build of torch (benchmarks/gpu_check.sh
prints nvidia-smi first and passes ``--device cuda --dtype bfloat16``):
    .venv/bin/python -m benchmarks.gpu_check --device cuda --dtype bfloat16
        [--store data/models] [--out gpu_check.json] [--skip-serving] [--skip-rm] [--skip-ppo]
Reduced mode, which also runs on a CPU (the slow test runs it):
    .venv/bin/python -m benchmarks.gpu_check --device cpu --dtype float32 --quick

Every part uses the real base model, policy/v0 (SmolLM2-135M-Instruct), from ``--store``,
or converted into a temporary store when that holds no policy (about 25 s). ``--dtype`` is
the compute precision; serving and the RM step apply it as the production code does:

- serving: our engine (``python -m services.inference.engine``) as a subprocess on the
  device, with ``FLYWHEEL_ENGINE_PRECISION`` fp32 or bf16 (bf16 weights), batches as
  large as the most requests in flight, pinned to v0, no Redis (its promotion channel
  just stays down; nothing else of the stack runs).
  Once its ``/health`` answers and one warm-up request (not counted) is done, each
  concurrency level (default 1 and 32; quick: 1 and 4) sends ``level x --rounds``
  streamed greedy chat requests of exactly ``--max-new-tokens`` new tokens each
  (``ignore_eos``; default 128, quick 16), at most ``level`` in flight.
  tokens/s = new tokens of all requests / wall seconds of the level (aggregate);
  TTFT p50 = median seconds from sending a request to its first token chunk.
  The engine is stopped at the end, also on errors.
- rm step: ``ScalarHeadModel`` from policy/v0 (fresh scalar head) trained by the library's
  ``train_reward_model`` (K-wise loss, AdamW, clipping) on synthetic K=4 rankings with
  ``--rm-prompts`` prompts (x4 answers) per step: fp32 weights and Adam, with bf16
  autocast when ``--dtype bfloat16`` (``RewardConfig.bf16``, as the trainer's reward
  stage runs on CUDA). One warm-up step, then one timed step; seconds/step and
  sequences/s (answers run through the model per second).
- ppo iteration: the library's ``PPOTrainer`` set up as benchmarks/ppo_throughput.py
  does (policy and reference from policy/v0; reward model a fresh ScalarHeadModel; the
  value model a copy of it), ``--ppo-episodes`` prompts per iteration, minibatches of
  ``--ppo-minibatch``, at most ``--ppo-new-tokens`` sampled tokens. fp32 weights (as the
  trainer's policy stage loads them); with ``--dtype bfloat16`` the iteration runs under
  ``torch.autocast`` bf16. PPOTrainer has no precision setting and the trainer's PPO stage
  runs plain fp32, so the bf16 figure is what autocast would buy; ``--dtype float32``
  measures what the trainer does today. One warm-up iteration, then one timed: seconds
  and episodes/s (rollout, scoring, targets and one PPO epoch of updates; model loading
  excluded).

Prints progress lines with timings, then a table, and writes the numbers to ``--out``
(JSON; a skipped part is null). ``--device cuda`` without a CUDA device exits with
status 2 and says so before anything is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

PRECISION = {"float32": "fp32", "bfloat16": "bf16"}  # the engine's names of the dtypes
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def log(message: str) -> None:
    """A progress line timed like the inference benchmark's (and on its clock, which the
    model-store helper also logs on). Imported here, not at the top: the device check
    comes before any heavy import."""
    from benchmarks import inference_throughput

    inference_throughput.log(message)


def check_device(device: str) -> str | None:
    """Why ``device`` cannot be used here, or None. Cheap: nothing is loaded."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        return (
            f"--device {device} asked for, but torch {torch.__version__} (CUDA build: {build}) "
            "sees no CUDA device: install a CUDA build of torch on a machine with an NVIDIA "
            "GPU and its driver, or run with --device cpu --dtype float32 --quick"
        )
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast(device: torch.device, dtype: str):
    """bf16 autocast for ``--dtype bfloat16`` (weights stay fp32), nothing for float32."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


# --- serving: our engine as a subprocess --------------------------------------------------------


def engine_env(args, store: Path, data_dir: Path, port: int, admin_port: int) -> dict[str, str]:
    """The engine's settings (services/inference/engine/settings.py) for this check."""
    from benchmarks.llamacpp_peer import free_port

    return {
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "FLYWHEEL_MODEL_STORE": str(store),
        # Nobody listens there: the engine's promotion channel stays down, which it tolerates
        # (and no Redis of anyone else's hears from it).
        "FLYWHEEL_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "FLYWHEEL_LOG_FORMAT": "text",
        "FLYWHEEL_ENGINE_DEVICE": args.device,
        "FLYWHEEL_ENGINE_PRECISION": PRECISION[args.dtype],
        "FLYWHEEL_ENGINE_VERSION": "v0",
        # Serve v0 throughout: no registry poll (which would switch to another promoted
        # version of the store) within the run.
        "FLYWHEEL_ENGINE_REGISTRY_POLL_S": "86400",
        "FLYWHEEL_ENGINE_HTTP_PORT": str(port),
        "FLYWHEEL_ENGINE_ADMIN_GRPC_PORT": str(admin_port),
        "FLYWHEEL_ENGINE_MAX_BATCH_SIZE": str(max(args.concurrency)),
    }


async def stream_chat(client, messages, max_tokens: int) -> tuple[int, float]:
    """(new tokens, seconds to the first token) of one streamed greedy chat completion."""
    body = {
        "model": "policy",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # the engine's (vLLM's) extension: exactly max_tokens new tokens
    }
    started = time.perf_counter()
    first_token = tokens = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"engine answered {response.status_code}: {response.text}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"engine failed a request: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            # The first chunk only opens the answer ({"role": "assistant"}); tokens follow.
            if first_token is None and any("role" not in c["delta"] for c in chunk["choices"]):
                first_token = time.perf_counter()
    if tokens is None or first_token is None:
        raise RuntimeError("a streamed answer ended without tokens or without usage")
    return tokens, first_token - started


async def measure_level(base_url: str, level: int, requests: int, max_tokens: int) -> dict:
    import httpx

    from benchmarks.inference_throughput import PROMPTS, chats

    messages = chats([PROMPTS[i % len(PROMPTS)] for i in range(requests)])
    limits = httpx.Limits(max_connections=level, max_keepalive_connections=level)
    async with httpx.AsyncClient(base_url=base_url, timeout=600.0, limits=limits) as client:
        gate = asyncio.Semaphore(level)

        async def one(chat) -> tuple[int, float]:
            async with gate:
                return await stream_chat(client, chat, max_tokens)

        started = time.perf_counter()
        answers = await asyncio.gather(*(one(m) for m in messages))
        seconds = time.perf_counter() - started
    tokens = sum(n for n, _ in answers)
    return {
        "concurrency": level,
        "requests": requests,
        "tokens": tokens,
        "stopped_early": sum(n < max_tokens for n, _ in answers),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ttft_p50_s": statistics.median(ttft for _, ttft in answers),
    }


async def warm_up(base_url: str, max_tokens: int) -> None:
    import httpx

    from benchmarks.inference_throughput import PROMPTS, chats

    async with httpx.AsyncClient(base_url=base_url, timeout=600.0) as client:
        await stream_chat(client, chats(PROMPTS[:1])[0], max_tokens)


def run_serving(args, store: Path, scratch: Path) -> dict:
    from benchmarks.llamacpp_peer import free_port, running_server

    port, admin_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = engine_env(args, store, scratch / "engine-data", port, admin_port)
    log_path = scratch / "engine.log"
    command = [sys.executable, "-m", "services.inference.engine"]
    log(
        f"serving: starting the engine on {args.device} ({PRECISION[args.dtype]}), "
        f"batches up to {max(args.concurrency)}, log {log_path}"
    )
    started = time.perf_counter()
    with running_server(command, f"{base_url}/health", log_path, env, args.server_timeout):
        log(f"serving: engine healthy after {time.perf_counter() - started:.1f} s")
        try:
            info, levels = measure_engine(args, base_url)
        except Exception:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            log("serving failed; the engine's log ends:\n" + "\n".join(tail))
            raise
    log("serving: engine stopped")
    return {
        "engine_device": info.get("model_device_type"),
        "engine_precision": info.get("model_dtype"),
        "max_batch_size": info.get("max_batch_size"),
        "max_new_tokens": args.max_new_tokens,
        "levels": levels,
    }


def measure_engine(args, base_url: str) -> tuple[dict, list[dict]]:
    """The engine's /info, then one warm-up request and every concurrency level."""
    info = json.loads(_get(f"{base_url}/info"))
    started = time.perf_counter()
    asyncio.run(warm_up(base_url, args.max_new_tokens))
    log(f"serving: warm-up request in {time.perf_counter() - started:.1f} s (not counted)")
    levels = []
    for level in args.concurrency:
        requests = level * args.rounds
        log(f"serving: {requests} requests, {level} in flight, {args.max_new_tokens} tokens each")
        result = asyncio.run(measure_level(base_url, level, requests, args.max_new_tokens))
        log(
            f"serving: {level} in flight: {result['tokens']} tokens in "
            f"{result['seconds']:.2f} s = {result['tokens_per_s']:.1f} tokens/s, "
            f"TTFT p50 {result['ttft_p50_s'] * 1000:.0f} ms"
            + (f", {result['stopped_early']} stopped early" if result["stopped_early"] else "")
        )
        levels.append(result)
    return info, levels


def _get(url: str) -> str:
    import httpx

    response = httpx.get(url, timeout=10.0)
    response.raise_for_status()
    return response.text


# --- one reward-model step ---------------------------------------------------------------------


@contextmanager
def step_end_times(logger_name: str):
    """perf_counter() at the end of each step of a services.rlhf training loop: run_steps logs
    one record per step (``log_every=1``) with the step number as ``record.step``."""
    times: dict[int, float] = {}

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            step = getattr(record, "step", None)
            if isinstance(step, int):
                times[step] = time.perf_counter()

    logger = logging.getLogger(logger_name)
    handler, level = Handler(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield times
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_reward_step(args, model_dir: Path, device: torch.device) -> dict:
    from benchmarks.reward_throughput import rankings
    from services.common.model_loading import load_tokenizer
    from services.rlhf.heads import ScalarHeadModel
    from services.rlhf.reward_model import RewardConfig, train_reward_model

    started = time.perf_counter()
    torch.manual_seed(0)  # the fresh scalar head
    model = ScalarHeadModel.from_pretrained(model_dir, device=str(device))
    tokenizer = load_tokenizer(model_dir)
    log(f"rm: ScalarHeadModel loaded on {device} in {time.perf_counter() - started:.1f} s")
    prompts = args.rm_prompts
    config = RewardConfig(
        prompts_per_batch=prompts,
        max_length=args.rm_max_length,
        bf16=args.dtype == "bfloat16",
        log_every=1,
    )
    # Two steps' worth of K=4 rankings: the first step warms up, the second is timed.
    comparisons = rankings(2 * prompts, seed=1)
    with step_end_times("services.rlhf.reward_model") as ends:
        started = time.perf_counter()
        result = train_reward_model(model, tokenizer, comparisons, config, progress=False)
    if result.steps != 2 or set(ends) != {1, 2}:
        raise RuntimeError(f"expected 2 logged reward-model steps, got {sorted(ends)}")
    warm_up, seconds = ends[1] - started, ends[2] - ends[1]
    sequences = prompts * 4
    log(f"rm: warm-up step {warm_up:.2f} s (not counted); timed step {seconds:.3f} s")
    del model
    free_memory(device)
    return {
        "k": 4,
        "prompts_per_step": prompts,
        "sequences_per_step": sequences,
        "comparisons_per_step": prompts * 6,
        "weights": "float32",
        "autocast": "bfloat16" if config.bf16 else None,
        "loss": result.losses[-1],
        "seconds_per_step": seconds,
        "sequences_per_s": sequences / seconds,
    }


# --- one PPO iteration -------------------------------------------------------------------------


def run_ppo_iteration(args, model_dir: Path, device: torch.device) -> dict:
    from transformers import AutoModelForCausalLM

    from benchmarks.ppo_throughput import make_prompts, matched_config
    from services.common.model_loading import load_tokenizer
    from services.rlhf.heads import ScalarHeadModel
    from services.rlhf.ppo import PPOTrainer

    def causal_lm():
        # fp32 weights, as the trainer's policy stage loads them.
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return model.to(device).eval()

    started = time.perf_counter()
    torch.manual_seed(0)
    policy, reference = causal_lm(), causal_lm()
    reward_model = ScalarHeadModel.from_pretrained(model_dir, device=str(device))
    tokenizer = load_tokenizer(model_dir)
    log(f"ppo: 3 models loaded on {device} in {time.perf_counter() - started:.1f} s")
    config = matched_config(args.ppo_episodes, args.ppo_minibatch, args.ppo_new_tokens, lr=3e-6)
    # value_model=None: the trainer makes it a copy of the reward model, as the paper does.
    trainer = PPOTrainer(policy, reference, None, reward_model, tokenizer, config)
    prompts = make_prompts(args.ppo_episodes)
    timings = []
    for seed in (0, 1):  # warm-up, timed
        with autocast(device, args.dtype):
            synchronize(device)
            started = time.perf_counter()
            stats = trainer.step(prompts, seed=seed)
            synchronize(device)
            timings.append(time.perf_counter() - started)
    log(
        f"ppo: warm-up iteration {timings[0]:.2f} s (not counted); timed iteration "
        f"{timings[1]:.2f} s, mean answer length {stats['answer_length']:.1f} tokens"
    )
    del trainer, policy, reference, reward_model
    free_memory(device)
    return {
        "episodes": args.ppo_episodes,
        "minibatch_size": args.ppo_minibatch,
        "max_new_tokens": args.ppo_new_tokens,
        "mean_answer_length": stats["answer_length"],
        "weights": "float32",
        "autocast": "bfloat16" if args.dtype == "bfloat16" else None,
        "seconds": timings[1],
        "episodes_per_s": args.ppo_episodes / timings[1],
    }


# --- report ------------------------------------------------------------------------------------


def table(result: dict) -> str:
    lines = [
        f"device: {result['device']} ({result['device_name']}), torch {result['torch']} "
        f"(CUDA {result['cuda'] or '-'}), dtype {result['dtype']}"
        + (", quick mode" if result["quick"] else ""),
        f"{'part':<10} {'measure':<36} {'value':>10}",
        "-" * 58,
    ]

    def row(part: str, measure: str, value: float | None = None, digits: int = 1) -> None:
        shown = "skipped" if value is None else f"{value:.{digits}f}"
        lines.append(f"{part:<10} {measure:<36} {shown:>10}")

    if (serving := result["serving"]) is None:
        row("serving", "-")
    else:
        for level in serving["levels"]:
            name = f"{level['concurrency']} in flight, {serving['max_new_tokens']} tokens:"
            row("serving", f"{name} tokens/s", level["tokens_per_s"])
            row("serving", f"{name} TTFT p50 ms", level["ttft_p50_s"] * 1000)
    if (rm := result["reward_model"]) is None:
        row("rm step", "-")
    else:
        name = f"K=4 x {rm['prompts_per_step']} prompts:"
        row("rm step", f"{name} seconds/step", rm["seconds_per_step"], 3)
        row("rm step", f"{name} sequences/s", rm["sequences_per_s"])
    if (ppo := result["ppo"]) is None:
        row("ppo iter", "-")
    else:
        name = f"{ppo['episodes']} episodes:"
        row("ppo iter", f"{name} seconds", ppo["seconds"], 2)
        row("ppo iter", f"{name} episodes/s", ppo["episodes_per_s"], 2)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--dtype", choices=sorted(PRECISION), default="bfloat16")
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--store", type=Path, help="a model store with policy/v0 (else a temp one)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-rm", action="store_true")
    parser.add_argument("--skip-ppo", action="store_true")
    serving = parser.add_argument_group("serving (defaults: full / --quick)")
    serving.add_argument("--concurrency", type=int, nargs="+", help="levels: 1 32 / 1 4")
    serving.add_argument("--max-new-tokens", type=int, help="per request: 128 / 16")
    serving.add_argument("--rounds", type=int, default=2, help="requests per level = level x this")
    serving.add_argument("--server-timeout", type=float, default=300.0, help="seconds to healthy")
    rm = parser.add_argument_group("reward-model step")
    rm.add_argument("--rm-prompts", type=int, help="K=4 rankings per step: 8 / 2")
    rm.add_argument("--rm-max-length", type=int, default=512)
    ppo = parser.add_argument_group("PPO iteration")
    ppo.add_argument("--ppo-episodes", type=int, help="episodes per iteration: 32 / 4")
    ppo.add_argument("--ppo-minibatch", type=int, help="episodes per optimizer step: 16 / 4")
    ppo.add_argument("--ppo-new-tokens", type=int, help="most sampled tokens: 64 / 16")
    args = parser.parse_args(argv)
    full, quick = (
        {
            "concurrency": [1, 32],
            "max_new_tokens": 128,
            "rm_prompts": 8,
            "ppo_episodes": 32,
            "ppo_minibatch": 16,
            "ppo_new_tokens": 64,
        },
        {
            "concurrency": [1, 4],
            "max_new_tokens": 16,
            "rm_prompts": 2,
            "ppo_episodes": 4,
            "ppo_minibatch": 4,
            "ppo_new_tokens": 16,
        },
    )
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if any(level < 1 for level in args.concurrency) or min(args.rounds, args.rm_prompts) < 1:
        parser.error("--concurrency, --rounds and --rm-prompts must be positive")
    return args


def model_store(store: Path | None, scratch: Path) -> tuple[Path, Path]:
    """(store root, policy/v0's folder): ``store`` if it holds a policy, else a fresh one."""
    from benchmarks.inference_throughput import policy_path

    started = time.perf_counter()
    path = policy_path(store or scratch, scratch)
    log(f"model store ready in {time.perf_counter() - started:.1f} s: {path}")
    return path.parents[1], path  # <store>/policy/v0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_device(args.device)
    if problem is not None:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dtype": args.dtype,
        "quick": args.quick,
        "serving": None,
        "reward_model": None,
        "ppo": None,
    }
    log(f"gpu check on {result['device_name']} ({device}), torch {torch.__version__}, {args.dtype}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        scratch = Path(tmp)
        store, model_dir = model_store(args.store, scratch / "store")
        if not args.skip_serving:
            result["serving"] = run_serving(args, store, scratch)
        if not args.skip_rm:
            result["reward_model"] = run_reward_step(args, model_dir, device)
        if not args.skip_ppo:
            result["ppo"] = run_ppo_iteration(args, model_dir, device)
    print()
    print(table(result))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
