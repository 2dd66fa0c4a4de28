#!/usr/bin/env bash
# OS packages, installed when missing (root with apt-get); prints what it did and exits 0 either way.
#   scripts/install_system_deps.sh        bubblewrap (bwrap): namespace isolation of model-written
#                                         code in the reward sandbox
#   scripts/install_system_deps.sh test   also shellcheck, for the lint test of the shell scripts
# Without bubblewrap the sandbox falls back to its rlimit/seccomp/Landlock mode with a warning (or
# refuses, with rewards.sandbox=bwrap); without shellcheck the lint test skips, saying why.
set -euo pipefail

declare -A command_of=([bubblewrap]=bwrap [shellcheck]=shellcheck)
wanted=(bubblewrap)
if [ "${1:-}" = test ]; then
  wanted+=(shellcheck)
fi
missing=()
for package in "${wanted[@]}"; do
  command -v "${command_of[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_system_deps: present: ${wanted[*]}"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: missing ${missing[*]}; not root or no apt-get, so not installing" \
       "(ask an administrator for these packages)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_system_deps: installed ${missing[*]}"
