#!/usr/bin/env bash
# Create .venv at the repo root and install megatron-prorl into it (editable).
#   scripts/install.sh         the package
#   scripts/install.sh test    the package, test tools, the OS sandbox (bubblewrap) and shellcheck (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
# The same install steps as the Docker image (scripts/install_project.sh), editable here.
if [ "${1:-}" = test ]; then
  PYTHON=.venv/bin/python bash scripts/install_project.sh --editable test
  bash scripts/install_system_deps.sh test
else
  PYTHON=.venv/bin/python bash scripts/install_project.sh --editable
fi
