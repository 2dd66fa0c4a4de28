#!/usr/bin/env bash
# The test suite in CI's two lanes, one after the other (pytest arguments go to both):
#   main   .venv: Python 3.11, current libraries, megatron-core 0.16.1 (scripts/install.sh)
#   image  .venv-image: the Docker image's Python 3.12 and library versions (scripts/image_lane.sh)
# Both lanes run whatever the first one's result; the exit status fails if either failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

main_lane() {
  # Install into .venv (torch pinned first: a bare `torch` pulls the CUDA build), then test.
  bash scripts/install.sh test && .venv/bin/python -m pytest -q --durations=15 "$@"
}

start=$SECONDS
main_lane "$@"
main=$?
main_s=$((SECONDS - start))
start=$SECONDS
bash scripts/image_lane.sh "$@"
image=$?
image_s=$((SECONDS - start))

echo "test.sh: main lane exit $main (${main_s} s), image lane exit $image (${image_s} s)"
[ "$main" = 0 ] && [ "$image" = 0 ]
