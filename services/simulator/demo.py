"""``python -m services.simulator.demo [--quick]``: the flywheel turning, end to end.

Starts the local stack with the trainer (``flywheel up``), then for each round: the training
personas (and a spammer) chat through the gateway and rank, thumb or vote on what they were
served; the trainer notices the new comparisons the way production does (beat's check), trains,
gates and promotes; the held-out personas judge the serving policy against v0 on held-out
prompts. Prints one line per round and a table, writes a report with plots, and stops what it
started (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from services.common.model_loading import load_causal_lm
from services.common.registry import ModelRegistry
from services.rlhf.evaluation import perplexity
from services.simulator.agreement import agreement, mean_agreement
from services.simulator.client import Labeler
from services.simulator.evaluate import judged_preference
from services.simulator.personas import Persona, default_panel
from services.simulator.prompts import general_texts, held_out_prompts, training_prompts
from services.simulator.report import RoundResult, table, write_report
from services.simulator.settings import DemoSettings
from services.simulator.stack import StackCommands

log = logging.getLogger(__name__)


class Demo:
    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.stack = StackCommands(settings.data_dir, settings.trainer_env())
        self.registry = ModelRegistry(self.stack.data_dir / "models")
        self.rng = random.Random(settings.seed)
        panel = default_panel()
        self.judges = [p for p in panel if p.held_out]
        self.trainers: list[Persona] = [
            p for p in panel if not p.held_out and (settings.include_spammer or not p.spammer)
        ]
        self.eval_prompts = [p.text for p in held_out_prompts()][: settings.eval_prompts]
        self.rows: list[RoundResult] = []
        self.served_pairs: list[tuple[str, str, str]] = []  # for the agreement measurement
        self._v0_perplexity: float | None = None

    def run(self) -> Path:
        s = self.settings
        self.stack.data_dir.mkdir(parents=True, exist_ok=True)
        self._init_model()
        print(f"starting the stack in {self.stack.data_dir} ...", flush=True)
        self.stack.run("up", timeout=1800)
        try:
            key = self.stack.api_key()
            labelers = {
                p.name: Labeler(p, s.gateway_url, s.feedback_url, key, s.seed, s.max_tokens)
                for p in [*self.trainers, *self.judges]
            }
            judge_client = labelers[self.judges[0].name]
            baseline = self._answers(judge_client)
            for round_number in range(1, s.rounds + 1):
                self._round(round_number, labelers, judge_client, baseline)
            report = self._report(baseline, self._answers(judge_client))
            for labeler in labelers.values():
                labeler.close()
        finally:
            print("stopping the stack ...", flush=True)
            self.stack.run("down", check=False)
        return report

    # ---- one round ----------------------------------------------------------------------

    def _round(self, number: int, labelers, judge_client, baseline: list[str]) -> None:
        s = self.settings
        before = {r["id"] for r in self.stack.runs()}
        started = time.monotonic()
        prompts = [p.text for p in training_prompts()]
        for _ in tqdm(range(s.requests_per_round), desc=f"round {number}: traffic", unit="req"):
            persona = self.rng.choice(self.trainers)
            labeler = labelers[persona.name]
            served = labeler.ask(self.rng.choice(prompts), s.candidates, s.temperature)
            labeler.give_feedback(served)
            a, b = self.rng.sample(range(len(served.answers)), 2)
            self.served_pairs.append((served.prompt, served.answers[a], served.answers[b]))
        run = self._wait_for_run(before, number)
        serving = self._wait_until_serving(judge_client)
        answers = self._answers(judge_client)
        preference = judged_preference(
            self.judges, self.eval_prompts, answers, baseline, seed=s.seed + number
        )
        stages = {st["name"]: st for st in run["stages"]}
        gate = stages.get("policy_gate", {}).get("outputs", {})
        row = RoundResult(
            round=number,
            comparisons=self._pairs_trained_on(),
            run_status=run["status"],
            gates="passed" if run["status"] == "succeeded" else run["reason"][:120],
            serving=serving,
            rm_accuracy=stages.get("reward_model", {}).get("outputs", {}).get("heldout_accuracy"),
            win_rate=preference.rate,
            win_low=preference.low,
            win_high=preference.high,
            kl_to_v0=gate.get("kl"),
            perplexity_change=self._perplexity_change(serving),
            stage_seconds={k: v["seconds"] or 0.0 for k, v in stages.items()},
            ppo_history=stages.get("ppo", {}).get("outputs", {}).get("history", []),
        )
        self.rows.append(row)
        print(f"{row.line()}  [{time.monotonic() - started:.0f} s]", flush=True)

    def _pairs_trained_on(self) -> int:
        """Comparison pairs in the snapshots of the runs that succeeded (each run trains on
        what arrived since the last successful one)."""
        total = 0
        for run in self.stack.runs(limit=100):
            if run["status"] == "succeeded":
                snapshot = next(st for st in run["stages"] if st["name"] == "snapshot")
                total += snapshot["outputs"].get("pairs", 0)
        return total

    def _wait_for_run(self, before: set[str], number: int) -> dict:
        """The run beat's check starts on this round's feedback, once it has ended."""
        deadline = time.monotonic() + self.settings.round_timeout_s
        with tqdm(desc=f"round {number}: training", unit="s", bar_format="{desc} {elapsed}") as bar:
            while time.monotonic() < deadline:
                new = [r for r in self.stack.runs() if r["id"] not in before]
                if new and new[0]["status"] not in ("pending", "running"):
                    return new[0]
                time.sleep(5)
                bar.update(5)
        raise TimeoutError(f"no run ended within {self.settings.round_timeout_s:.0f} s")

    def _wait_until_serving(self, client: Labeler) -> str:
        """The policy version users are served after the round: the promoted one, once the
        engine has switched (it follows promotions within seconds)."""
        promoted = self.registry.promoted("policy")
        expected = promoted.version if promoted else "v0"
        deadline = time.monotonic() + 120
        version = client.ask("Hello!", n=1).model_version
        while version != expected and time.monotonic() < deadline:
            time.sleep(1)
            version = client.ask("Hello!", n=1).model_version
        return version

    def _answers(self, client: Labeler) -> list[str]:
        """One answer of the serving policy to each held-out prompt (the same seeds each time,
        so only the policy changes between rounds)."""
        rng_state = client.rng.getstate()
        client.rng.seed(self.settings.seed)
        answers = [client.ask(p, n=1, temperature=0.7).answers[0] for p in self.eval_prompts]
        client.rng.setstate(rng_state)
        return answers

    def _perplexity_change(self, version: str) -> float:
        """General-text perplexity of ``version`` over v0's, minus 1 (v0's is measured once)."""
        if version == "v0":
            return 0.0
        if self._v0_perplexity is None:
            self._v0_perplexity = self._perplexity("v0")
        return self._perplexity(version) / self._v0_perplexity - 1

    def _perplexity(self, version: str) -> float:
        model, tokenizer = load_causal_lm(self.registry.get("policy", version).path, device="cpu")
        return perplexity(model, tokenizer, general_texts())

    def _init_model(self) -> None:
        if not self.registry.versions("policy"):
            args = ["models", "init", *(["--tiny"] if self.settings.quick else [])]
            self.stack.run(*args, timeout=1800)

    # ---- the report ---------------------------------------------------------------------

    def _report(self, baseline: list[str], final: list[str]) -> Path:
        folder = self.stack.data_dir / "reports" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        humans = [p for p in self.trainers if not p.spammer]
        agreed = mean_agreement(agreement(humans, self.served_pairs, self.settings.seed))
        examples = list(zip(self.eval_prompts, baseline, final, strict=True))[:5]
        path = write_report(
            folder, self.rows, examples, agreed, self.settings.model_dump(mode="json")
        )
        print("\n" + table(self.rows))
        print(f"report: {path}")
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.simulator.demo")
    parser.add_argument("--quick", action="store_true", help="the tiny model, a few minutes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = DemoSettings(quick=True) if args.quick else DemoSettings()
    Demo(settings).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
