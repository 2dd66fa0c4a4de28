"""A stand-in distribution on disk: a package's files and the dist-info an install leaves, so that
``importlib.metadata.version`` and ``importlib.util.find_spec`` see it as installed (the machines
here cannot install TensorRT-LLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping


def write_distribution(root: Path, name: str, version: str, files: Mapping[str, str]) -> Path:
    """``root/name/<path>`` for each of ``files`` and ``root/name-version.dist-info``; returns
    ``root`` (to put on sys.path)."""
    for relative, source in files.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    dist = root / f"{name}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root
