#!/usr/bin/env bash
# GPU check (benchmarks/gpu_check.py): the engine's tokens/s, one reward-model step and one
# PPO iteration on the GPU in bf16. Extra arguments go to the script and win over these
# defaults, e.g.  benchmarks/gpu_check.sh --store data/models --out /tmp/gpu_check.json
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || echo "gpu_check.sh: nvidia-smi failed (exit $?); going on" >&2
else
    echo "gpu_check.sh: nvidia-smi not found" >&2
fi
if [[ -x "$repo/.venv/bin/python" ]]; then
    python="$repo/.venv/bin/python"
else
    python=python3
fi
# The repo on the path, so `-m benchmarks.gpu_check` (and the engine it starts) import from
# any working directory; --out stays relative to where this was run.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m benchmarks.gpu_check --device cuda --dtype bfloat16 "$@"
