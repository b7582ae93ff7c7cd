"""Snapshots: the comparisons a run trains on, exported once into an immutable file.

``ExportComparisons`` names each export by a snapshot id; the file is written under that
name (atomically, and never rewritten), so a reward model's manifest that names its snapshot
names exactly what trained it, and a retried stage reads the same data.

Held out is decided by prompt: a hash of the conversation the answers reply to. Every group
of a prompt, whoever rated it and however (a ranking, a pairwise vote), lies on one side, in
every run; so no reward model is gated on a prompt it trained on, and PPO, which trains on
the training groups' prompts, never trains on a prompt the gates judge on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.atomic_files import write_atomically
from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc


def prompt_key(prompt: list[dict[str, str]]) -> str:
    """The identity of a prompt (its messages' roles and texts, exactly), for the split."""
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def is_heldout(key: str, percent: int) -> bool:
    """Whether the prompt with ``key`` is held out at ``percent``: a hash, so the same prompt
    is on the same side in every run, and a bigger share keeps every prompt a smaller one held
    out."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


RewardFold = Literal["reward", "judge"]


def fold(prompt: list[dict[str, str]]) -> RewardFold:
    """Which reward model a training group of ``prompt`` trains (cross-fitting): the one PPO
    optimises against ("reward") or the policy gate's judge ("judge"). Disjoint halves by
    prompt, so the judge learned from none of the comparisons the other one learned from."""
    digest = hashlib.sha256(("fold:" + prompt_key(prompt)).encode()).digest()
    return "judge" if digest[0] & 1 else "reward"


@dataclass(frozen=True)
class Group:
    """One comparison group as the trainer stores it (one JSON line)."""

    comparison_id: str
    prompt: list[dict[str, str]]
    answers: list[str]
    pairs: list[tuple[int, int]]
    model_versions: list[str]
    heldout: bool
    # When the feedback was recorded (ISO 8601, UTC); empty in files written before it was kept.
    recorded_at: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Group:
        values = json.loads(line)
        values["pairs"] = [tuple(p) for p in values["pairs"]]
        return cls(**values)


@dataclass(frozen=True)
class Snapshot:
    id: str
    until: datetime
    path: Path
    groups: int
    heldout_groups: int
    pairs: int

    def outputs(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.id,
            "until": self.until.isoformat(),
            "dataset": str(self.path),
            "groups": self.groups,
            "heldout_groups": self.heldout_groups,
            "pairs": self.pairs,
        }


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def export(
    channel: grpc.Channel,
    datasets_dir: Path,
    since: datetime | None,
    heldout_percent: int,
    timeout_s: float = 600.0,
) -> Snapshot:
    """Export the comparisons recorded since ``since`` into ``datasets_dir/<snapshot>.jsonl``.

    Raises if the stream ends without its last page (a cut export is never used)."""
    stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
    request = feedback_pb2.ExportComparisonsRequest()
    if since is not None:
        request.since.CopyFrom(_timestamp(since))
    groups: list[Group] = []
    last: feedback_pb2.ComparisonPage | None = None
    for page in stub.ExportComparisons(request, timeout=timeout_s):
        groups.extend(_group(g, heldout_percent) for g in page.groups)
        last = page
    if last is None or not last.last:
        raise RuntimeError("the export ended before its last page")
    if last.total_groups != len(groups):
        raise RuntimeError(f"the export promised {last.total_groups} groups, sent {len(groups)}")
    path = datasets_dir / f"{last.snapshot_id}.jsonl"
    if not path.exists():  # immutable: a snapshot's file is written once
        datasets_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, "".join(g.to_json() + "\n" for g in groups), mode=0o600)
    return Snapshot(
        id=last.snapshot_id,
        until=last.until.ToDatetime(tzinfo=UTC),
        path=path,
        groups=len(groups),
        heldout_groups=sum(g.heldout for g in groups),
        pairs=sum(len(g.pairs) for g in groups),
    )


def _group(message: feedback_pb2.ComparisonGroup, heldout_percent: int) -> Group:
    prompt = [{"role": m.role, "content": m.content} for m in message.prompt]
    return Group(
        comparison_id=message.comparison_id,
        prompt=prompt,
        answers=[c.text for c in message.candidates],
        pairs=[(p.better, p.worse) for p in message.pairs],
        model_versions=[c.model_version for c in message.candidates],
        heldout=is_heldout(prompt_key(prompt), heldout_percent),
        recorded_at=message.recorded_at.ToDatetime(tzinfo=UTC).isoformat(),
    )


def read(path: Path) -> Iterator[Group]:
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield Group.from_json(line)
