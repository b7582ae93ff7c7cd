"""Which policy version serves, and hot swapping to another without dropping requests.

A reload loads the new version beside the old one and switches the pointer new requests
read. Requests already admitted keep a reference to the version they started on (the
scheduler batches them apart), so they finish on the old weights, which Python frees
once the last of them leaves.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import torch

from services.common.model_loading import load_causal_lm, pick_device, resolve_precision
from services.common.registry import ModelRegistry
from services.inference.engine import metrics
from services.inference.engine.scheduler import LoadedPolicy

log = logging.getLogger(__name__)

ROLE = "policy"


class PolicyHolder:
    def __init__(self, registry: ModelRegistry, device: str = "auto", precision: str = "auto"):
        self.registry = registry
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self._current: LoadedPolicy | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedPolicy | None:
        return self._current

    def reload(self, version: str = "") -> tuple[str, str]:
        """Serve ``version`` (default: the promoted one): (previous, current) version names.

        Registry errors propagate and the old version keeps serving.
        """
        with self._lock:
            previous = self._current.version if self._current else ""
            info = self.registry.version_to_load(ROLE, version, serving=previous)
            if info is None:
                return previous, previous
            started = time.perf_counter()
            # bf16 weights, not fp32 ones under autocast: a decode step reads every weight
            # once, so halving their bytes is what speeds it up (autocast would re-cast them
            # at every step). transformers keeps the norms' arithmetic in fp32.
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            model, tokenizer = load_causal_lm(info.path, device=str(self.device), dtype=dtype)
            eos = model.generation_config.eos_token_id
            eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
            if tokenizer.eos_token_id is not None:
                eos_ids.add(tokenizer.eos_token_id)
            self._current = LoadedPolicy(
                version=info.version,
                model=model,
                tokenizer=tokenizer,
                eos_token_ids=frozenset(eos_ids),
                loaded_at=datetime.now(UTC),
            )
            if previous:
                metrics.SERVING.labels(previous).set(0)
            metrics.SERVING.labels(info.version).set(1)
            log.info(
                "policy %s serving (was %s), loaded in %.1f s on %s in %s",
                info.version,
                previous or "none",
                time.perf_counter() - started,
                self.device,
                self.precision,
            )
            return previous, info.version
