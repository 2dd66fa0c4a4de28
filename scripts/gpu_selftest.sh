#!/usr/bin/env bash
# GPU self-check (README, "GPU self-check"): the GPU tests (pytest -m gpu tests/gpu) and the GPU
# benchmarks (bench/gpu), then one table of results; exit status non-zero on any failure, and on
# a machine without a CUDA device. Run it from a checkout, in the Docker image or on any CUDA machine:
#   bash scripts/gpu_selftest.sh [--out DIR] [--no-bench] [--engine auto|transformers|tensorrt_llm]
# Python: $PYTHON, else .venv/bin/python when there is one, else python3 (the image's).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
# The checkout's code is what gets checked, in the benchmarks and their spawned ranks too.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" scripts/gpu_selftest.py "$@"
