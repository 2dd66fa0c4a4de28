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
# Not here, to keep CI under an hour: tests that exercise none of the image's pinned libraries
# beyond what the rest runs (the local Slurm cluster's daemons and sbatch script, the code
# sandbox's namespaces and cgroups, the linters, and the study's smoke run of the same commands).
skip=(--ignore=tests/slurm --ignore=tests/sandbox --ignore=tests/test_lint.py --ignore=tests/test_study_smoke.py)
exec "$venv/bin/python" -m pytest -q --durations=15 "${skip[@]}" "$@"
