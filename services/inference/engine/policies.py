"""Which policy versions serve, and hot swapping to another without dropping requests.

A reload loads the new version beside the old one and switches the pointer new requests
read. Requests already admitted keep a reference to the version they started on (the
scheduler batches them apart), so they finish on the old weights, which Python frees
once the last of them leaves.

During a canary (services/common/registry.py) the canary is loaded too, beside the promoted
version: a request that names it (the gateway routes a share of its API keys there) gets it,
every other request the promoted one. Two versions cost twice the weights' memory (SmolLM2-135M:
about 270 MB more in bf16, 540 MB in fp32) and each has its own prefix cache budget; the
scheduler's request slots are shared, and it batches each version's requests apart.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import torch

from services.common.model_host import ModelHost
from services.common.model_loading import load_causal_lm, pick_device, resolve_precision
from services.common.registry import Canary, ModelRegistry, VersionInfo
from services.inference.engine import metrics
from services.inference.engine.prefix_cache import PrefixCache
from services.inference.engine.scheduler import LoadedPolicy
from services.rlhf import llama_decode

log = logging.getLogger(__name__)

ROLE = "policy"


class PolicyHolder:
    def __init__(
        self,
        registry: ModelRegistry,
        device: str = "auto",
        precision: str = "auto",
        *,
        fast_decode: bool = True,
        prefix_cache_mb: int = 0,
    ):
        self.registry = registry
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.fast_decode = fast_decode
        self.prefix_cache_bytes = prefix_cache_mb * 2**20
        self._host = ModelHost(
            registry,
            ROLE,
            self._load,
            metrics.SERVING,
            describe=lambda policy: (
                f"on {self.device} in {self.precision}"
                + (", fast decode step" if policy.decode_step is not None else "")
            ),
        )

        self._canary_host = ModelHost(
            registry, ROLE, self._load, metrics.CANARY_SERVING, describe=lambda _: "as the canary"
        )
        self._canary: Canary | None = None  # the registry's, as last followed

    @property
    def current(self) -> LoadedPolicy | None:
        return self._host.current

    @property
    def canary(self) -> tuple[LoadedPolicy, float] | None:
        """The canary loaded beside the promoted version and its traffic share, if any."""
        loaded, followed = self._canary_host.current, self._canary
        return (loaded, followed.share) if loaded is not None and followed else None

    def for_request(self, version: str | None) -> LoadedPolicy | None:
        """The version a request asked for by name if it is loaded here (the canary or the
        promoted one), else the promoted one: a gateway that still routes to a canary that
        just ended gets the promoted version, and the answer names the version that gave it."""
        canary = self._canary_host.current
        if version and canary is not None and canary.version == version:
            return canary
        return self._host.current

    def follow_canary(self, canary: Canary | None) -> None:
        """Load the registry's canary beside the promoted version, or drop the one that ended."""
        if canary is None:
            self._canary_host.drop()
        else:
            self._canary_host.reload(canary.version)
        self._canary = canary

    def reload(self, version: str = "") -> tuple[str, str]:
        """Serve ``version`` (default: the promoted one): (previous, current) version names.

        Registry errors propagate and the old version keeps serving.
        """
        return self._host.reload(version)

    def _load(self, info: VersionInfo) -> LoadedPolicy:
        # bf16 weights, not fp32 ones under autocast: a decode step reads every weight
        # once, so halving their bytes is what speeds it up (autocast would re-cast them
        # at every step). transformers keeps the norms' arithmetic in fp32.
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model, tokenizer = load_causal_lm(info.path, device=str(self.device), dtype=dtype)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        return LoadedPolicy(
            version=info.version,
            model=model,
            tokenizer=tokenizer,
            eos_token_ids=frozenset(eos_ids),
            loaded_at=datetime.now(UTC),
            decode_step=llama_decode.build(model) if self.fast_decode else None,
            prefix_cache=PrefixCache.for_model(model.config, dtype, self.prefix_cache_bytes),
        )
