"""PPO throughput: our PPOTrainer vs TRL's PPOTrainer (trl.experimental.ppo), side by side.

Run (needs the bench extra: pip install -c constraints.txt -e '.[bench]'):
    .venv/bin/python -m benchmarks.ppo_throughput [--episodes-per-iteration 16]
        [--minibatch-size 8] [--iterations 3] [--response-length 32] [--store /tmp/store1]
        [--rounds 3]

With ``--rounds R`` the two sides run R times each, alternating which goes first
(benchmarks/rounds.py), and the summary gives medians with their range.

Throughput is episodes per second of PPO iterations (rollout, scoring, targets, one
PPO epoch of updates). Each side runs one warm-up iteration that is not counted,
then ``--iterations`` timed ones; model loading and trainer set-up are excluded.

Matched: the same backbone for all four models (policy/v0, SmolLM2-135M-Instruct,
fp32, CPU); the same chat prompts with the chat template's generation prompt (the
same token ids); as many prompts as episodes per iteration, so both sides roll
out every prompt once per iteration; the same minibatch size (one optimizer step
per minibatch, also the chunk size of generation and of the no-grad rollout
passes), 1 PPO epoch, sampling at temperature 1 with no top-k/top-p, at most
``--response-length`` new tokens, stopping at the end-of-turn token on both
sides (TRL: ``stop_token="eos"``; the mean answer lengths are printed), the same
learning rate for policy and value with Adam betas (0.9, 0.95) and a constant
schedule, KL coefficient 0.02 (k1), clip ranges 0.2, gamma 1, lambda 0.95,
whitened advantages and unwhitened rewards. Ours runs without ptx (TRL has none);
TRL runs without logging integrations, saving, sample generations, gradient
checkpointing or bf16, and its console printer callbacks are removed.

The reward and value models start with fresh scalar heads (ours: ScalarHeadModel;
TRL: AutoModelForSequenceClassification with one label, whose ``.score`` head
TRL's PPO reads); the value model is a copy of the reward model. Untrained
heads make the scores meaningless but do not change the work done.

What differs, by design of each trainer:
- Both take the rollout log-probabilities from the logits of the generation pass
  (no separate policy forward); ours also computes the unembedding only over answer
  columns in its scoring passes.
- TRL trains policy and value with one AdamW over both and a single backward of
  ``pg_loss + vf_coef * vf_loss`` and does not clip gradients; ours has two Adam
  optimizers, two backward passes and clips each gradient norm at 1.0.
- SmolLM2's pad token is its end-of-turn token, which occurs in every chat
  prompt; TRL derives attention masks from ``!= pad_token_id``, so TRL gets
  ``<|endoftext|>`` (absent from the prompts) as its pad token. Ours keeps
  explicit masks and the model's own pad token.
- TRL adds the score one token after the answer's end-of-turn token and masks
  padding its own way; ours adds it on the last answer token. Same cost.
"""

from __future__ import annotations

import argparse
import copy
import gc
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from benchmarks.rounds import interleave, report, spread
from services.common.base_model import init_policy_v0
from services.common.registry import ModelRegistry
from services.rlhf.generation import SamplingConfig
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.ppo import PPOConfig, PPOTrainer
from services.rlhf.tokenization import encode_prompt

KL_COEF = 0.02
ADAM_BETAS = (0.9, 0.95)
TRL_PAD_TOKEN = "<|endoftext|>"

TOPICS = [
    "how rainbows form",
    "why the sea is salty",
    "how a bicycle stays upright",
    "what makes bread rise",
    "how bees make honey",
    "why leaves change colour in autumn",
    "how a compass works",
    "why the sky is blue",
    "how volcanoes erupt",
    "what causes the seasons",
    "how a refrigerator keeps food cold",
    "why cats purr",
    "how airplanes fly",
    "what causes thunder",
    "how plants drink water",
    "why we dream",
]


def make_prompts(n: int) -> list[list[dict[str, str]]]:
    """n short chat prompts that ask for answers longer than the token budget."""
    return [
        [
            {
                "role": "user",
                "content": f"Explain {TOPICS[i % len(TOPICS)]} in a detailed paragraph"
                + (f" (version {i // len(TOPICS) + 1})." if i >= len(TOPICS) else "."),
            }
        ]
        for i in range(n)
    ]


def answer_length(tokens: list[int], eos: int) -> int:
    """Answer tokens up to and including the first end-of-turn token (ours counts the same)."""
    return tokens.index(eos) + 1 if eos in tokens else len(tokens)


def matched_config(episodes: int, minibatch: int, new_tokens: int, lr: float) -> PPOConfig:
    """Our PPO with the settings matched to TRL's (the module docstring lists them); the GPU
    check runs the same iteration."""
    return PPOConfig(
        policy_lr=lr,
        value_lr=lr,
        adam_betas=ADAM_BETAS,
        rollout_batch_size=episodes,
        minibatch_size=minibatch,
        ppo_epochs=1,
        kl_beta=KL_COEF,
        ptx_coef=0.0,
        whiten_advantages=True,
        sampling=SamplingConfig(max_new_tokens=new_tokens, do_sample=True, temperature=1.0),
        seed=0,
    )


def run_ours(model_dir: Path, tokenizer, prompts, args) -> tuple[float, float]:
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reward_model = ScalarHeadModel.from_pretrained(model_dir)
    config = matched_config(len(prompts), args.minibatch_size, args.response_length, args.lr)
    # value_model=None: the trainer makes it a copy of the reward model, as the paper does.
    trainer = PPOTrainer(policy, reference, None, reward_model, tokenizer, config)
    trainer.step(prompts, seed=0)  # warm-up, not counted
    lengths = []
    started = time.perf_counter()
    for i in range(1, args.iterations + 1):
        stats = trainer.step(prompts, seed=i)
        lengths.append(stats["answer_length"])
    seconds = time.perf_counter() - started
    episodes = args.iterations * len(prompts)
    mean_length = sum(lengths) / len(lengths)
    print(
        f"ours: {args.iterations} iterations, {episodes} episodes in {seconds:.1f}s, "
        f"mean answer length {mean_length:.1f} tokens"
    )
    return episodes / seconds, mean_length


class StepTimes(TrainerCallback):
    """Wall-clock time at the end of each TRL PPO iteration (one ``global_step`` each)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def record_answer_lengths(policy, eos: int) -> list[list[int]]:
    """Wrap ``policy.generate`` (on this instance) to record each rollout's answer lengths."""
    generate = policy.generate
    batches: list[list[int]] = []

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        prompt_width = kwargs["input_ids"].shape[1]
        sequences = out.sequences if hasattr(out, "sequences") else out
        batches.append([answer_length(row, eos) for row in sequences[:, prompt_width:].tolist()])
        return out

    policy.generate = recording_generate
    return batches


def run_trl(model_dir: Path, prompts, args) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOConfig as TRLPPOConfig
    from trl.experimental.ppo import PPOTrainer as TRLPPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]  # before changing the pad token
    tokenizer.pad_token = TRL_PAD_TOKEN
    tokenizer.padding_side = "left"  # TRL appends the answers after the padded prompt block
    pad_id = tokenizer.pad_token_id

    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy.generation_config.pad_token_id = pad_id
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=torch.float32
    )
    value_model = copy.deepcopy(reward_model)  # the value model starts as the RM, as ours
    for model in (policy, reference, reward_model, value_model):
        model.config.pad_token_id = pad_id
    lengths = record_answer_lengths(policy, tokenizer.eos_token_id)

    episodes_per_iteration = len(prompts)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        config = TRLPPOConfig(
            output_dir=out,
            per_device_train_batch_size=episodes_per_iteration,
            gradient_accumulation_steps=1,
            num_mini_batches=episodes_per_iteration // args.minibatch_size,
            local_rollout_forward_batch_size=args.minibatch_size,
            total_episodes=episodes_per_iteration * (args.iterations + 1),  # + warm-up
            num_ppo_epochs=1,
            response_length=args.response_length,
            stop_token="eos",
            temperature=1.0,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            adam_beta2=ADAM_BETAS[1],
            kl_coef=KL_COEF,
            kl_estimator="k1",
            cliprange=0.2,
            cliprange_value=0.2,
            gamma=1.0,
            lam=0.95,
            whiten_rewards=False,
            missing_eos_penalty=None,
            num_sample_generations=0,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=0,
        )
        trainer = TRLPPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward_model,
            train_dataset=dataset,
            value_model=value_model,
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.train()

    if len(timer.ends) != args.iterations + 1:
        raise RuntimeError(f"TRL ran {len(timer.ends)} iterations, expected {args.iterations + 1}")
    seconds = timer.ends[-1] - timer.ends[0]  # the first (warm-up) iteration is not counted
    chunks_per_iteration = episodes_per_iteration // args.minibatch_size
    timed = [n for batch in lengths[chunks_per_iteration:] for n in batch]
    episodes = args.iterations * episodes_per_iteration
    mean_length = sum(timed) / len(timed)
    print(
        f"TRL: {args.iterations} iterations, {episodes} episodes in {seconds:.1f}s, "
        f"mean answer length {mean_length:.1f} tokens"
    )
    return episodes / seconds, mean_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes-per-iteration", type=int, default=16)
    parser.add_argument("--minibatch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per side")
    parser.add_argument("--response-length", type=int, default=32, help="most new tokens")
    parser.add_argument("--lr", type=float, default=3e-6, help="policy and value learning rate")
    parser.add_argument("--store", type=Path, help="a model store with policy/v0 (else a temp one)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds (medians and spread when > 1)"
    )
    args = parser.parse_args()
    if args.episodes_per_iteration % args.minibatch_size:
        parser.error("--episodes-per-iteration must be a multiple of --minibatch-size")

    lengths = {"ours": [], "TRL": []}

    def side(name, run):
        def measure() -> float:
            torch.manual_seed(0)
            rate, length = run()
            lengths[name].append(length)
            gc.collect()  # free one side's four models and optimizer states before the other's
            return rate

        return measure

    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(args.store or Path(tmp))
        info, _ = init_policy_v0(registry)
        tokenizer = AutoTokenizer.from_pretrained(info.path)
        prompts = make_prompts(args.episodes_per_iteration)
        result = interleave(
            args.rounds,
            side("ours", lambda: run_ours(info.path, tokenizer, prompts, args)),
            side("TRL", lambda: run_trl(info.path, prompts, args)),
        )

    print(
        f"episodes/s of PPO iterations; mean answer length: ours {spread(lengths['ours'], 1)}, "
        f"TRL {spread(lengths['TRL'], 1)} tokens"
    )
    report(result, "episodes/s", "TRL", target=1.5)


if __name__ == "__main__":
    main()
