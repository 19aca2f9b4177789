#!/usr/bin/env bash
# One-GPU check: full-size SD1.5 then SDXL (random weights), bf16, one sampling step and one training step of
# every method; seconds and peak memory per component, each flushed to
# benchmarks/results/gpu_check-<gpu name>.jsonl as soon as it is measured (see benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh                        # on a GPU: <= 4 minutes on one H100 (--max-seconds 240)
#   benchmarks/gpu_check.sh --tiny --device cpu    # dry run on tiny bundles (well under a minute)
#   benchmarks/gpu_check.sh --backbones sdxl --methods lpo --grad-ckpt on
#
# Offline: no weights and no network are needed (random weights; HF_HUB_OFFLINE=1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export DIFFUSERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="python3"
fi

"$PY" -c "import lpo_bench, torch" || { echo "gpu_check: lpo_bench and torch must be importable by $PY" >&2; exit 2; }
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
