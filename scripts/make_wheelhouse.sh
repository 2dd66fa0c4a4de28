#!/usr/bin/env bash
# Collect a wheelhouse for installing megatron-prorl where there is no network (an air-gapped cluster):
#   PYTHON=python3 scripts/make_wheelhouse.sh DIR
# Run it on a connected machine with the Python version and platform of the target (best: in the
# image the cluster runs). DIR gets the project's wheel, a wheel of every dependency (those an index
# has only as source are built here, so the target needs no build backend) and DIR/requirements.txt,
# the exact versions it holds. Left out: torch and the other accelerator packages
# (scripts/packages.sh), which the NGC container or a separate install provides. On the target:
#   pip install --no-index --find-links DIR megatron-prorl
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: PYTHON=python3 scripts/make_wheelhouse.sh DIR" >&2
  exit 2
fi
if [ -e "$1" ] && [ -n "$(ls -A "$1")" ]; then
  echo "make_wheelhouse: $1 is not empty (an old wheel there could win over the one made now)" >&2
  exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
# shellcheck source=scripts/packages.sh source-path=SCRIPTDIR/..
source scripts/packages.sh  # megatron_core_for, $accelerator_packages
py=${PYTHON:-python3}
megatron_core=$(megatron_core_for "$py")
pip=("$py" -m pip --disable-pip-version-check)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The wheel is built from a copy of its sources (the Dockerfile copies the same): setuptools builds
# in the source tree's build/, where a module deleted from the source would stay and ship.
mkdir "$work/src"
cp -r pyproject.toml README.md megatron_prorl checkpoint_convert "$work/src"
"${pip[@]}" wheel -q --no-deps -w "$out" "$work/src"
wheel=("$out"/megatron_prorl-*.whl)

# Where $py has torch, pip resolves against a wheel holding only its metadata: nothing of torch is
# fetched, and NGC's torch (on no index, yet pinned by the image's PIP_CONSTRAINT) resolves too.
mkdir "$work/torch"
"$py" - "$work/torch" <<'PY'
import importlib.metadata as md
import sys
import zipfile

try:
    torch = md.distribution("torch")
except md.PackageNotFoundError:
    sys.exit()
info = f"torch-{torch.version}.dist-info"
with zipfile.ZipFile(f"{sys.argv[1]}/torch-{torch.version}-py3-none-any.whl", "w") as whl:
    whl.writestr(f"{info}/METADATA", torch.read_text("METADATA"))
    whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    whl.writestr(f"{info}/RECORD", "")
PY
shopt -s nullglob
torch=("$work"/torch/*.whl)
# Resolve everything (pip reads only metadata), then fetch all but the accelerator packages.
"${pip[@]}" install -q --dry-run --ignore-installed --report "$work/report.json" \
  "$megatron_core" "${wheel[0]}" "${torch[@]}"
"$py" - "$work/report.json" "$accelerator_packages" "$out" "$work/fetch.txt" <<'PY'
import json
import re
import sys
import sysconfig
from pathlib import Path
from urllib.parse import unquote, urlparse

report, accelerators, out, fetch = sys.argv[1:]
accelerator = re.compile(accelerators, re.IGNORECASE)
kept, left_out, urls = [], [], []
for item in json.loads(Path(report).read_text())["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if accelerator.fullmatch(re.sub(r"[-_.]+", "-", name).lower()):
        left_out.append(name)
        continue
    kept.append(f"{name}=={version}")
    url = item["download_info"]["url"]
    if Path(unquote(urlparse(url).path)).parent != Path(out):  # the project's wheel is there already
        sha256 = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        urls.append(f"{name} @ {url}" + (f"#sha256={sha256}" if sha256 else ""))  # the file resolved
Path(fetch).write_text("\n".join(urls) + "\n")
tag = f"cp{sys.version_info.major}{sys.version_info.minor} {sysconfig.get_platform()}"
Path(out, "requirements.txt").write_text(
    f"# megatron-prorl wheelhouse for {tag} (scripts/make_wheelhouse.sh). Offline install:\n"
    "#   pip install --no-index --find-links DIR megatron-prorl\n"
    f"# Not here (the container or a separate install provides them): {', '.join(sorted(left_out, key=str.lower))}\n"
    + "".join(f"{line}\n" for line in sorted(kept, key=str.lower)))
PY
# One wheel per line: downloaded where the index has one, built from source where it has not.
"${pip[@]}" wheel -q --no-deps -w "$out" -r "$work/fetch.txt"

count=$(find "$out" -name '*.whl' | wc -l)
echo "make_wheelhouse: $count wheels, $(du -sh "$out" | cut -f1) in $out (pinned in requirements.txt)"
