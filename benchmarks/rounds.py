"""Interleaved rounds of a side-by-side benchmark, and their summary (median and spread).

A box's speed drifts by 10-20% over minutes (docs/benchmarks.md), so one run of each side
says little: the sides run in rounds, alternating which goes first, and the summary gives
each side's median with its range and the median of the per-round ratios with theirs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Rounds:
    ours: list[float]
    peer: list[float]

    @property
    def ratios(self) -> list[float]:
        return [o / p for o, p in zip(self.ours, self.peer, strict=True)]


def interleave(rounds: int, ours: Callable[[], float], peer: Callable[[], float]) -> Rounds:
    """Run both sides ``rounds`` times; odd rounds run ours first, even rounds the peer."""
    result = Rounds([], [])
    for index in range(rounds):
        order = [("ours", ours), ("peer", peer)]
        if index % 2:
            order.reverse()
        for side, run in order:
            print(f"round {index + 1}/{rounds}: {side}", flush=True)
            getattr(result, side).append(run())
    return result


def spread(values: list[float], digits: int = 2) -> str:
    """``median [min, max]``."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"[{min(values):.{digits}f}, {max(values):.{digits}f}]"
    )


def report(result: Rounds, unit: str, peer_name: str, target: float | None = None) -> None:
    print()
    print(f"| round | ours ({unit}) | {peer_name} ({unit}) | ratio |")
    print("|---|---|---|---|")
    for index, (o, p) in enumerate(zip(result.ours, result.peer, strict=True), start=1):
        print(f"| {index} | {o:.2f} | {p:.2f} | {o / p:.2f}x |")
    print(
        f"| median [min, max] | {spread(result.ours)} | {spread(result.peer)} "
        f"| {spread(result.ratios)}x |"
    )
    print()
    ratios = result.ratios
    above_one = min(ratios) > 1.0
    line = (
        f"ratio ours/{peer_name}: median {statistics.median(ratios):.2f}x, "
        f"range {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds; "
        f"the range {'does not overlap' if above_one else 'overlaps or is below'} 1.0x"
    )
    if target is not None:
        met = statistics.median(ratios) >= target and above_one
        line += f"; target >= {target:g}x: {'PASS' if met else 'MISS'}"
    print(line)
