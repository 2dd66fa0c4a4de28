#!/usr/bin/env bash
# Install megatron-prorl and its pinned megatron-core into the Python environment at hand without
# replacing what that environment carries for the accelerators: torch, Transformer Engine,
# TensorRT-LLM, Apex and NVIDIA's libraries (the NGC builds in the image) stay as installed, and the
# install fails if it breaks a requirement that held before. The Dockerfile runs it on the image's
# Python, scripts/install.sh on .venv (so CI runs it on every build).
#   PYTHON=python3 scripts/install_project.sh [--editable] [EXTRA[,EXTRA...]]    e.g. --editable test
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
# shellcheck source=scripts/packages.sh source-path=SCRIPTDIR/..
source scripts/packages.sh  # megatron_core_for, $accelerator_packages
megatron_core=$(megatron_core_for "$py")

editable=()
target=.
for arg in "$@"; do
  case $arg in
    --editable) editable=(-e) ;;
    *) target=".[$arg]" ;;
  esac
done

pip=("$py" -m pip --disable-pip-version-check)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"${pip[@]}" list --format=freeze \
  | grep -iE "^($accelerator_packages)==" \
  > "$constraints" || true
broken_before=$("${pip[@]}" check 2>&1 | grep -v '^No broken requirements' || true)

"${pip[@]}" install -q --no-cache-dir -c "$constraints" "$megatron_core" "${editable[@]}" "$target"

broken_now=$("${pip[@]}" check 2>&1 | grep -v '^No broken requirements' || true)
new=$(comm -13 <(sort <<<"$broken_before") <(sort <<<"$broken_now") | sed '/^$/d')
if [ -n "$new" ]; then
  echo "install_project: installing broke requirements that held before:" >&2
  echo "$new" >&2
  exit 1
fi
"$py" - <<'PY'
import importlib.metadata as md
import sys

import megatron_prorl  # noqa: F401  (the package imports)

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"

print(f"install_project: megatron-prorl {version('megatron-prorl')} on Python {sys.version.split()[0]}: "
      + ", ".join(f"{n} {version(n)}" for n in ("megatron-core", "torch", "transformers", "transformer-engine",
                                                 "tensorrt_llm")))
PY
