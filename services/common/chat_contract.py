"""Rules of a chat request that every service must agree on: the roles, the seed range and
how the ``n`` candidates of one request get their seeds.

The gateway validates against these before it spends anything, the engine again on its own
API, so a request one of them accepts is never refused by the other for these reasons.
"""

from __future__ import annotations

from typing import Literal, get_args

ChatRole = Literal["system", "user", "assistant"]
CHAT_ROLES: tuple[str, ...] = get_args(ChatRole)

# Seeds are unsigned 64-bit (TGI's u64; a torch.Generator takes [0, 2^64)).
MAX_SEED = 2**64 - 1


def candidate_seed(seed: int | None, index: int) -> int | None:
    """The seed of candidate ``index`` of a request with ``seed``: candidates must differ, and
    each stays reproducible, so a fixed seed becomes seed + index."""
    return None if seed is None else seed + index


def seeds_fit(seed: int | None, candidates: int) -> bool:
    """Whether every candidate's seed stays in range."""
    return seed is None or seed + candidates - 1 <= MAX_SEED
