#!/usr/bin/env bash
# The test suite: unit, integration and a short end-to-end run of the real pipeline.
#   scripts/test.sh            everything but the slow marker (~20-30 min on 2 cores)
#   scripts/test.sh --slow     only the long runs (marker `slow`)
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
PY="${RLHF_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
# Build the tiny models once, before tests start competing for the 2 cores.
"$PY" scripts/make_tiny_models.py >/dev/null
if [[ "${1:-}" == "--slow" ]]; then
  shift
  exec "$PY" -m pytest -m slow -p no:cacheprovider "$@"
fi
exec "$PY" -m pytest -p no:cacheprovider "$@"
