"""Does this Python environment carry the image's versions (scripts/image_versions.env)?

    python3 scripts/check_image_versions.py image    in the Docker image, after the install
    python3 scripts/check_image_versions.py lane     in CI's image lane (scripts/image_lane.sh)

Prints what it found, one line; exits 1 naming each version that differs. The image keeps NGC's
own builds of torch and Transformer Engine (on no public index), so there they are reported, not
checked; the lane installs the public torch release and no TE (it needs CUDA).
"""

from __future__ import annotations

import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.specifiers import SpecifierSet

ENV_FILE = Path(__file__).resolve().parent / "image_versions.env"

# distribution -> (key in the env file, checked in the image, checked in the lane)
PACKAGES = {
    "torch": ("image_torch", False, True),
    "transformers": ("image_transformers", True, True),
    "datasets": ("image_datasets", True, True),
    "numpy": ("image_numpy", True, True),
    "megatron-core": ("image_megatron_core", True, True),
    "transformer-engine": ("image_transformer_engine", False, False),
    "tensorrt_llm": ("image_tensorrt_llm", True, False),
}


def image_versions(path: Path = ENV_FILE) -> dict[str, str]:
    """The KEY=VALUE lines of the env file (shell quoting removed), plus image_tensorrt_llm: the
    base image's tag."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = shlex.split(value)[0]
    values["image_tensorrt_llm"] = values["image_base"].rsplit(":", 1)[1]
    return values


def installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def matches(found: str | None, wanted: str) -> bool:
    """An exact version, or a specifier set such as '>=2.0,<2.4'."""
    if found is None:
        return False
    spec = SpecifierSet(wanted if wanted[0] in "<>=!~" else f"=={wanted}")
    return spec.contains(found, prereleases=True)


def problems(where: str, versions: dict[str, str]) -> tuple[list[str], list[str]]:
    """(what was found, what differs) for ``where`` in {"image", "lane"}."""
    python = ".".join(map(str, sys.version_info[:2]))
    found = [f"Python {python}"]
    wrong = [] if python == versions["image_python"] else [f"Python {python} (the image's is {versions['image_python']})"]
    for dist, (key, in_image, in_lane) in PACKAGES.items():
        have, want = installed(dist), versions[key]
        found.append(f"{dist} {have or '-'}")
        if (in_image if where == "image" else in_lane) and not matches(have, want):
            wrong.append(f"{dist} {have or 'not installed'} (scripts/image_versions.env: {key}={want})")
    return found, wrong


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("image", "lane"):
        print("usage: check_image_versions.py image|lane", file=sys.stderr)
        return 2
    found, wrong = problems(argv[0], image_versions())
    print(f"check_image_versions ({argv[0]}): " + ", ".join(found))
    for line in wrong:
        print(f"check_image_versions: not the image's version: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
