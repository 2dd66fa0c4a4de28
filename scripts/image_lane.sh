#!/usr/bin/env bash
# CI's image lane: the test suite on the Docker image's Python and library versions
# (scripts/image_versions.env), in .venv-image, installed through scripts/install_project.sh as the
# Dockerfile installs. torch comes from the public index as its CUDA build (~3 GB with NVIDIA's
# libraries), which runs on the CPU.
#   scripts/image_lane.sh [PYTEST_ARGS...]
#   PYTHON_IMAGE=/path/to/python3.12 picks the interpreter (default: pyenv's, else python3.12 on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/image_versions.env
source scripts/image_versions.env
venv=.venv-image

py=${PYTHON_IMAGE:-}
if [ -z "$py" ]; then
  prefix=$(pyenv prefix "$image_python" 2>/dev/null || true)
  if [ -n "$prefix" ] && [ -x "$prefix/bin/python$image_python" ]; then
    py=$prefix/bin/python$image_python
  else
    py=$(command -v "python$image_python" || true)
  fi
fi
if [ -z "$py" ] || ! "$py" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$image_python'" 2>/dev/null; then
  echo "image_lane: no Python $image_python interpreter${py:+ ($py is not one)}: install one (pyenv install $image_python)" \
       "or point PYTHON_IMAGE at it" >&2
  exit 2
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# The image's versions first, then the project the way the Dockerfile installs it, then a check
# that the project's own requirements moved none of them.
"$venv/bin/python" -m pip install -q "torch==$image_torch" "transformers==$image_transformers" \
  "datasets==$image_datasets" "numpy$image_numpy"
PYTHON=$venv/bin/python bash scripts/install_project.sh --editable test
"$venv/bin/python" scripts/check_image_versions.py lane
# Without arguments, the tests that run code on the image's pinned libraries where their versions
# matter: datasets (data), transformers (conversion, the engine, exports, eval), torch and
# megatron-core (models, checkpoints and resharding, the device simulation, weight sync), and the
# image's own checks. The rest of the suite (Slurm, sandbox, algorithms, plan, faults) runs in the
# main lane; the whole suite here is `scripts/image_lane.sh tests`. CI stays under an hour.
if [ $# -eq 0 ]; then
  set -- tests/data tests/convert tests/rollout tests/models tests/weight_sync tests/eval/test_eval_run.py \
    tests/train/test_checkpoint.py tests/train/test_resharding.py tests/train/test_trainer.py \
    tests/runtime/test_device.py tests/test_tiny_model.py tests/test_image_versions.py tests/test_wheelhouse.py
fi
exec "$venv/bin/python" -m pytest -q --durations=15 "$@"
