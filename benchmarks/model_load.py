"""Why policy/v0 is converted once: load time from the registry vs from the shipped GGUF.

Run: .venv/bin/python -m benchmarks.model_load [--repeats 3]

Both sides load SmolLM2-135M-Instruct as float32 on the CPU and end with a model
ready to generate. The GGUF side is what every service would pay at start-up and
on every hot swap without the conversion (transformers dequantizes on load); the
registry side is the safetensors checkpoint in the model store, checksums
verified. Prints each median and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.base_model import find_base_gguf, init_policy_v0
from services.common.model_loading import load_version
from services.common.registry import ModelRegistry


def time_gguf(gguf: Path) -> float:
    started = time.perf_counter()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    return time.perf_counter() - started


def time_registry(registry: ModelRegistry) -> float:
    started = time.perf_counter()
    load_version(registry, "policy/v0", device="cpu")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", type=Path, help="a model store with policy/v0 (else a temp one)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(args.store or Path(tmp))
        init_policy_v0(registry)
        gguf = find_base_gguf()
        gguf_times, registry_times = [], []
        for i in range(args.repeats):
            gguf_times.append(time_gguf(gguf))
            registry_times.append(time_registry(registry))
            print(f"run {i + 1}: gguf {gguf_times[-1]:.2f}s  registry {registry_times[-1]:.2f}s")

    gguf_s, registry_s = statistics.median(gguf_times), statistics.median(registry_times)
    print(f"median load, GGUF (dequantize): {gguf_s:.2f} s")
    print(f"median load, registry (safetensors, verified): {registry_s:.2f} s")
    print(f"ratio GGUF / registry: {gguf_s / registry_s:.1f}x faster from the registry")


if __name__ == "__main__":
    main()
