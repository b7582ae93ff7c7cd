"""Conventions for the algorithm configs: documented dataclasses that travel with checkpoints.

Every config is a dataclass whose fields are declared with :func:`option`, which
carries a help text; :func:`describe` renders them (for ``--help`` screens and
docs), and :func:`to_dict` / :func:`from_dict` put a config inside a checkpoint
or a registry manifest and read it back, refusing unknown keys so that a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    """A config field with its help text (the default may be mutable: it is copied)."""
    if isinstance(default, list | dict | set):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    return cls(**data)


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for every field, in declaration order."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows
