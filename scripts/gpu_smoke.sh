#!/usr/bin/env bash
# One-command GPU smoke test (machines with >= 1 NVIDIA GPU; ~10 minutes, estimate, not yet
# measured): installs the GPU variant into .venv, builds the tiny models, runs 2 GRPO steps of
# recipes/grpo_tiny.yaml in the hybrid engine (1 GPU shared 0.4/0.4/0.2, vLLM asleep while
# training, CUDA IPC sync) and, with >= 2 GPUs, in the split layout (NCCL sync), then prints one PASS / FAIL / SKIP line per check.
#   scripts/gpu_smoke.sh [--steps 2] [--bound 0.05] [--min-freed 0.5] [--out runs/gpu_smoke] [--gpus N]
# Checks per layout: every step ran, rollout/logprob_diff_mean < bound at every step, the
# weight version advanced once per step, the expected transport; hybrid: vLLM's sleep freed
# at least --min-freed GiB of GPU memory at every step (rollout/sleep_freed_gib).
# Exit: 0 all checks passed (or skipped), 1 a check failed, 2 no GPU / bad arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu_smoke: no NVIDIA GPU here (nvidia-smi -L lists none); this test needs >= 1 GPU" >&2
  exit 2
fi
RLHF_VARIANT=gpu bash "$ROOT/scripts/setup.sh"
PY="${RLHF_VENV:-$ROOT/.venv}/bin/python"
"$PY" "$ROOT/scripts/make_tiny_models.py" >/dev/null
exec "$PY" "$ROOT/scripts/gpu_smoke.py" "$@"
