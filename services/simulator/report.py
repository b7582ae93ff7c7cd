"""The demo's report: a Markdown table per round, example answers side by side, PNG plots."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class RoundResult:
    round: int
    comparisons: int  # comparison pairs trained on so far
    run_status: str
    gates: str  # "passed", or the stage and reason that stopped the run
    serving: str  # the policy version serving after the round
    rm_accuracy: float | None
    win_rate: float  # the held-out judges' preference for the serving policy over v0
    win_low: float
    win_high: float
    kl_to_v0: float | None
    perplexity_change: float  # general-text perplexity, serving / v0 - 1
    stage_seconds: dict[str, float] = field(default_factory=dict)
    ppo_history: list[dict[str, float]] = field(default_factory=list)

    def line(self) -> str:
        rm = f"{self.rm_accuracy:.2f}" if self.rm_accuracy is not None else "-"
        kl = f"{self.kl_to_v0:.2f}" if self.kl_to_v0 is not None else "-"
        return (
            f"round {self.round}: {self.run_status} ({self.gates}); serving {self.serving}; "
            f"RM acc {rm}; win rate vs v0 {self.win_rate:.2f} "
            f"[{self.win_low:.2f}, {self.win_high:.2f}]; KL {kl}; "
            f"perplexity {self.perplexity_change:+.1%}"
        )


def table(rows: list[RoundResult]) -> str:
    header = (
        "| round | comparisons | run | gates | serving | RM held-out acc | win rate vs v0 "
        "(95% CI) | KL to v0 | general-text perplexity | stage seconds |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        seconds = ", ".join(f"{k} {v:.0f}" for k, v in r.stage_seconds.items())
        rm = f"{r.rm_accuracy:.3f}" if r.rm_accuracy is not None else "-"
        kl = f"{r.kl_to_v0:.2f}" if r.kl_to_v0 is not None else "-"
        lines.append(
            f"| {r.round} | {r.comparisons} | {r.run_status} | {r.gates} | {r.serving} | {rm} "
            f"| {r.win_rate:.2f} [{r.win_low:.2f}, {r.win_high:.2f}] | {kl} "
            f"| {r.perplexity_change:+.1%} | {seconds} |"
        )
    return header + "\n".join(lines) + "\n"


def plots(rows: list[RoundResult], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rounds = [r.round for r in rows]
    written = []

    fig, (win, kl) = plt.subplots(1, 2, figsize=(9, 3.5))
    win.errorbar(
        rounds,
        [r.win_rate for r in rows],
        yerr=[[r.win_rate - r.win_low for r in rows], [r.win_high - r.win_rate for r in rows]],
        marker="o",
        capsize=4,
    )
    win.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    win.set(title="Preferred over v0 (held-out judges)", xlabel="round", ylim=(0, 1))
    win.set_xticks(rounds)
    kl.plot(rounds, [r.kl_to_v0 or 0.0 for r in rows], marker="o")
    kl.set(title="KL to v0 (nats per answer)", xlabel="round")
    kl.set_xticks(rounds)
    written.append(_save(fig, folder / "win_rate_and_kl.png"))

    history = [h for r in rows for h in r.ppo_history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for axis, name in zip(
        axes, ("objective/scores", "objective/kl", "objective/entropy"), strict=True
    ):
        axis.plot([h.get(name, float("nan")) for h in history])
        axis.set(title=name, xlabel="PPO iteration (all rounds)")
    written.append(_save(fig, folder / "ppo.png"))

    fig, axis = plt.subplots(figsize=(4.5, 3.2))
    axis.plot(rounds, [r.rm_accuracy or float("nan") for r in rows], marker="o")
    axis.set(title="Reward model held-out accuracy", xlabel="round", ylim=(0, 1))
    axis.set_xticks(rounds)
    written.append(_save(fig, folder / "rm_accuracy.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    folder: Path,
    rows: list[RoundResult],
    examples: list[tuple[str, str, str]],
    sections: list[str],
    settings: dict,
) -> Path:
    """Write ``report.md`` (and the plots beside it) into ``folder``; its path."""
    images = plots(rows, folder)
    parts = [
        "# Flywheel demo report\n",
        "## Rounds\n",
        table(rows),
        *[f"\n{section}" for section in sections],
        "\n## Plots\n",
        *[f"![{p.stem}]({p.name})\n" for p in images],
        "\n## Example answers to held-out prompts\n",
    ]
    for prompt, base, final in examples:
        parts.append(
            f"\n**{prompt}**\n\n| v0 | final |\n|---|---|\n| {_cell(base)} | {_cell(final)} |\n"
        )
    parts.append("\n## Settings\n\n```\n")
    parts.extend(f"{k} = {v}\n" for k, v in settings.items())
    parts.append("```\n\n## Raw\n\n```\n")
    parts.extend(f"{asdict(r)}\n" for r in rows)
    parts.append("```\n")
    path = folder / "report.md"
    path.write_text("".join(parts))
    return path


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"
