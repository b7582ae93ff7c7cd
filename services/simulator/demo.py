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
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from services.common.model_loading import load_causal_lm
from services.common.registry import ModelRegistry
from services.common.training_runs import RunSummary
from services.rlhf.evaluation import perplexity
from services.simulator.ablation import alignment_tax
from services.simulator.ablation import table as ablation_table
from services.simulator.agreement import PanelAgreement, panel_agreement
from services.simulator.client import Labeler
from services.simulator.evaluate import Preference, judged_preference
from services.simulator.personas import Persona, default_panel
from services.simulator.prompts import general_texts, held_out_prompts, training_prompts
from services.simulator.report import RoundResult, table, write_report
from services.simulator.settings import DemoSettings
from services.simulator.stack import StackCommands
from services.simulator.traffic import plan, run_traffic

log = logging.getLogger(__name__)

# How often the demo asks the trainer for its runs: a CLI process each time, which costs
# about a core-second, so often only while traffic must stop quickly.
_RUN_POLL_S = 5
_TRAINING_POLL_S = 15
_SNAPSHOT_ATTEMPTS = 3  # traffic rounds a demo round gives a trainer that waits for more
_JUDGED_AT_ONCE = 8  # concurrent held-out requests while judging
_JUDGE_RATE_LIMIT = 600.0  # requests per minute (and burst) of a judge's key
# Which seeds the held-out answers are sampled with: v0's baseline on one set, every policy
# judged against it (v0 itself for the noise floor) on another, the ceiling's v0 samples on a
# third.
_BASELINE_SEEDS, _POLICY_SEEDS, _CEILING_SEEDS = 0, 1, 2


class Demo:
    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        # Each demo turns the flywheel from v0: the stack's state (models, feedback, runs)
        # lives in a folder of its own, started afresh; reports stay beside it.
        self.stack = StackCommands(settings.data_dir / "stack", settings.trainer_env())
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
        self._fresh_stack()
        self._init_model()
        print(f"starting the stack in {self.stack.data_dir} ...", flush=True)
        self.stack.run("up", timeout=1800)
        try:
            # Every persona is a user with its own key (and the gateway's rate limit); the
            # judges are an evaluation harness asking all held-out prompts at once: a higher
            # limit, as an operator would give such a client.
            labelers = {
                p.name: Labeler(
                    p,
                    s.gateway_url,
                    s.feedback_url,
                    self.stack.create_api_key(
                        f"demo persona {p.name}", _JUDGE_RATE_LIMIT if p.held_out else None
                    ),
                    s.seed,
                    s.max_tokens,
                )
                for p in [*self.trainers, *self.judges]
            }
            judge_client = labelers[self.judges[0].name]
            baseline = self._answers(judge_client, _BASELINE_SEEDS)
            scale = self._measure_scale(judge_client, baseline)
            for round_number in range(1, s.rounds + 1):
                self._round(round_number, labelers, judge_client, baseline)
            final = self._answers(judge_client, _POLICY_SEEDS)
            report = self._report(baseline, final, scale)
            for labeler in labelers.values():
                labeler.close()
        finally:
            print("stopping the stack ...", flush=True)
            self.stack.run("down", check=False)
        return report

    # ---- one round ----------------------------------------------------------------------

    def _round(self, number: int, labelers, judge_client, baseline: list[list[str]]) -> None:
        s = self.settings
        started = time.monotonic()
        traffic_s = 0.0
        for _attempt in range(_SNAPSHOT_ATTEMPTS):
            before = {r["id"] for r in self.stack.runs()}
            traffic_s += self._traffic(number, labelers, before)
            run = self._wait_for_run(before, number)
            if not _waits_for_comparisons(run):
                break
            # As in production, the trainer stopped at its snapshot to wait for more
            # comparisons (too few held-out groups to gate on): users keep coming.
            print(f"round {number}: {run['reason']}; more traffic", flush=True)
        serving = self._wait_until_serving(judge_client)
        answers = self._answers(judge_client, _POLICY_SEEDS)
        preference = judged_preference(
            self.judges, self.eval_prompts, answers, baseline, seed=s.seed + number
        )
        summary = RunSummary.from_json(run)
        row = RoundResult(
            round=number,
            comparisons=self._pairs_trained_on(),
            run_status=summary.status,
            gates="passed" if summary.status == "succeeded" else summary.reason[:120],
            serving=serving,
            rm_accuracy=summary.output("reward_model", "heldout_accuracy"),
            win_rate=preference.rate,
            win_low=preference.low,
            win_high=preference.high,
            kl_to_v0=summary.output("policy_gate", "kl"),
            perplexity_change=self._perplexity_change(serving),
            stage_seconds={"traffic": traffic_s}
            | {st.name: st.seconds or 0.0 for st in summary.stages},
            ppo_history=summary.output("ppo", "history") or [],
        )
        self.rows.append(row)
        print(f"{row.line()}  [{time.monotonic() - started:.0f} s]", flush=True)

    def _traffic(self, number: int, labelers: dict[str, Labeler], before: set[str]) -> float:
        """The training personas' requests and feedback, until the trainer starts a run on
        them (or the round's requests are all sent); the seconds it took."""
        s = self.settings
        queues = plan(
            [p.name for p in self.trainers],
            [p.text for p in training_prompts()],
            s.requests_per_round,
            self.rng,
        )
        run_started = threading.Event()
        watcher = threading.Thread(
            target=self._watch_for_run, args=(before, run_started), daemon=True
        )
        started = time.monotonic()
        watcher.start()
        with tqdm(total=s.requests_per_round, desc=f"round {number}: traffic", unit="req") as bar:
            result = run_traffic(
                labelers,
                queues,
                s.candidates,
                s.temperature,
                run_started,
                bar.update,
                s.requests_in_flight,
            )
        seconds = time.monotonic() - started
        run_started.set()  # also ends the watcher
        watcher.join()
        self.served_pairs.extend(result.served_pairs)
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.feedback.items()))
        print(
            f"round {number}: {result.requests} requests ({kinds}) in {seconds:.0f} s", flush=True
        )
        return seconds

    def _watch_for_run(self, before: set[str], run_started: threading.Event) -> None:
        """Sets ``run_started`` once beat's check has started a run not in ``before``."""
        while not run_started.wait(_RUN_POLL_S):
            if any(r["id"] not in before for r in self.stack.runs(limit=3)):
                run_started.set()

    def _pairs_trained_on(self) -> int:
        """Comparison pairs in the snapshots of the runs that succeeded (each run trains on
        what arrived since the last successful one)."""
        total = 0
        for run in map(RunSummary.from_json, self.stack.runs(limit=100)):
            if run.status == "succeeded":
                total += run.output("snapshot", "pairs") or 0
        return total

    def _wait_for_run(self, before: set[str], number: int) -> dict:
        """The run beat's check starts on this round's feedback, once it has ended."""
        deadline = time.monotonic() + self.settings.round_timeout_s
        with tqdm(desc=f"round {number}: training", unit="s", bar_format="{desc} {elapsed}") as bar:
            while time.monotonic() < deadline:
                new = [r for r in self.stack.runs() if r["id"] not in before]
                if new and not RunSummary.from_json(new[-1]).active:
                    return new[-1]
                time.sleep(_TRAINING_POLL_S)
                bar.update(_TRAINING_POLL_S)
        raise TimeoutError(f"no run ended within {self.settings.round_timeout_s:.0f} s")

    def _wait_until_serving(self, client: Labeler) -> str:
        """The policy version users are served after the round: the promoted one, once the
        engine has switched (it follows promotions within seconds)."""
        promoted = self.registry.promoted("policy")
        expected = promoted.version if promoted else "v0"
        deadline = time.monotonic() + 120
        version = client.ask("Hello!", n=1).model_version
        while version != expected and time.monotonic() < deadline:
            time.sleep(2)
            version = client.ask("Hello!", n=1).model_version
        return version

    def _answers(self, client: Labeler, seeds_of: int, n: int | None = None) -> list[list[str]]:
        """``n`` answers (default ``eval_samples``) of the serving policy to each held-out
        prompt, asked all at once (the engine batches them). ``seeds_of`` picks the seeds:
        the same each time for the same value, so only the policy changes between rounds."""
        count = n or self.settings.eval_samples
        seeds = random.Random(self.settings.seed * 1000 + seeds_of)
        jobs = [(p, seeds.randrange(2**32)) for p in self.eval_prompts]
        with ThreadPoolExecutor(_JUDGED_AT_ONCE, thread_name_prefix="judge") as pool:
            replies = pool.map(lambda job: client.ask(job[0], count, 0.7, seed=job[1]), jobs)
            return [list(reply.answers) for reply in replies]

    def _measure_scale(self, client: Labeler, baseline: list[list[str]]) -> MeasureScale:
        """Where the headline can fall, measured on v0 before any training: the noise floor
        (v0's answers on the policies' seeds against v0's on the baseline's: the measure's
        own swing) and the re-weighting ceiling (the best of ``ceiling_candidates`` v0
        samples by the judges' mean utility against each baseline answer: what a policy that
        only learned to prefer what v0 already writes sometimes would reach)."""
        s = self.settings
        noise = judged_preference(
            self.judges, self.eval_prompts, self._answers(client, _POLICY_SEEDS), baseline, s.seed
        )
        if not s.ceiling_candidates:
            return MeasureScale(noise, None)
        candidates = self._answers(client, _CEILING_SEEDS, s.ceiling_candidates)
        best = [
            max(answers, key=lambda a, p=prompt: self._judges_utility(p, a))
            for prompt, answers in zip(self.eval_prompts, candidates, strict=True)
        ]
        ceiling = judged_preference(
            self.judges,
            self.eval_prompts,
            [[b] * len(base) for b, base in zip(best, baseline, strict=True)],
            baseline,
            s.seed,
        )
        return MeasureScale(noise, ceiling)

    def _judges_utility(self, prompt: str, answer: str) -> float:
        return sum(judge.utility(prompt, answer) for judge in self.judges) / len(self.judges)

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

    def _fresh_stack(self) -> None:
        """Stop a stack an earlier demo left running (killed before it could stop it) and
        clear its state, so this demo starts from v0 with no feedback."""
        if self.stack.data_dir.exists():
            self.stack.run("down", check=False)
            shutil.rmtree(self.stack.data_dir)
        self.stack.data_dir.mkdir(parents=True)

    def _init_model(self) -> None:
        if not self.registry.versions("policy"):
            args = ["models", "init", *(["--tiny"] if self.settings.quick else [])]
            self.stack.run(*args, timeout=1800)

    # ---- the report ---------------------------------------------------------------------

    def _report(
        self, baseline: list[list[str]], final: list[list[str]], scale: MeasureScale
    ) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        folder = self.settings.data_dir.resolve() / "reports" / stamp
        spammer = next((p for p in self.trainers if p.spammer), None)
        humans = [p for p in self.trainers if not p.spammer]
        agreed = panel_agreement(
            humans, self.judges, spammer, self.served_pairs, self.settings.seed
        )
        final_preference = judged_preference(
            self.judges, self.eval_prompts, final, baseline, self.settings.seed
        )
        sections = [_scale_section(scale, final_preference), _agreement_section(agreed)]
        if self.settings.ablation:
            sections.append(self._ablation(folder))
        firsts = [
            (p, b[0], f[0]) for p, b, f in zip(self.eval_prompts, baseline, final, strict=True)
        ]
        examples = firsts[:5]
        path = write_report(
            folder, self.rows, examples, sections, self.settings.model_dump(mode="json")
        )
        print("\n" + table(self.rows))
        for section in sections:
            print("\n" + section)
        print(f"report: {path}")
        return path

    def _ablation(self, folder: Path) -> str:
        """The last policy the trainer made with PPO-ptx, against the same run without ptx."""
        made = [v for v in self.registry.versions("policy") if v.manifest.config.get("ppo")]
        if not made:
            return "## Alignment tax (--ablation)\n\nNo policy was trained: nothing to ablate.\n"
        promoted = self.registry.promoted("policy")
        chosen = promoted if promoted and promoted.manifest.config.get("ppo") else made[-1]
        print(f"ablation: PPO without ptx beside policy/{chosen.version} ...", flush=True)
        arms = alignment_tax(
            self.registry,
            chosen.version,
            self.eval_prompts,
            self.judges,
            general_texts(),
            folder / "ablation",
            self.settings.max_tokens,
            self.settings.seed,
        )
        return (
            "## Alignment tax (--ablation)\n\n"
            f"policy/{chosen.version} (PPO-ptx, by the trainer) and the same PPO run without "
            "ptx (same start, RM, prompts, settings and seed), each judged against v0 by the "
            "held-out personas on answers sampled in the demo's process with the same seeds.\n\n"
            + ablation_table(arms)
            + "\n"
        )


def _waits_for_comparisons(run: dict) -> bool:
    """The run stopped at its snapshot, which the trainer does while too few comparisons (or
    held-out groups) have arrived; it starts again once more have."""
    return RunSummary.from_json(run).waiting_for_data


@dataclass(frozen=True)
class MeasureScale:
    noise_floor: Preference  # v0 against v0, other seeds
    ceiling: Preference | None  # v0's best sample by the judges' utility against v0


def _scale_section(scale: MeasureScale, final: Preference) -> str:
    def shown(p: Preference) -> str:
        return f"{p.rate:.2f} [{p.low:.2f}, {p.high:.2f}]"

    ceiling = shown(scale.ceiling) if scale.ceiling is not None else "not measured"
    return (
        "## The measure's scale\n\n"
        f"The held-out judges on {final.prompts} prompts, {final.judgements} judgements, the "
        "interval resampling prompts:\n\n"
        "| | judges prefer it over v0 (95% CI) |\n|---|---|\n"
        f"| noise floor: v0 against v0 (other seeds) | {shown(scale.noise_floor)} |\n"
        f"| the final policy | {shown(final)} |\n"
        f"| re-weighting ceiling: v0's best sample by the judges' utility | {ceiling} |\n"
    )


def _agreement_section(agreed: PanelAgreement) -> str:
    spammer = (
        f"; the spammer with the judges: {agreed.spammer_with_judges:.0%} (chance: 50%), its "
        "votes are noise the reward model has to average out (the trainer filters no raters)"
        if agreed.spammer_with_judges is not None
        else ""
    )
    return (
        "## Labeler agreement\n\n"
        "On the answer pairs served in the rounds: the training personas with each other "
        f"{agreed.among_trainers:.0%} (the paper's labelers: about 73%), with the held-out "
        f"judges {agreed.trainers_with_judges:.0%} (the paper: about 77%){spammer}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.simulator.demo")
    parser.add_argument("--quick", action="store_true", help="the tiny model, a few minutes")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also train the last run without ptx and print the alignment-tax table",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    chosen = {k: True for k in ("quick", "ablation") if getattr(args, k)}
    settings = DemoSettings(**chosen)
    Demo(settings).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
