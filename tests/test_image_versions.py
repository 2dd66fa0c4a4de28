"""scripts/image_versions.env states the Docker image's versions once: the Dockerfile builds on the
base it names and installs through scripts that read it, and CI's image lane (scripts/image_lane.sh)
installs exactly those versions; scripts/check_image_versions.py compares an environment with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_image_versions as civ  # noqa: E402

VERSIONS = civ.image_versions()


def sourced(script: str) -> str:
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_dockerfile_builds_on_the_stated_base_and_checks_the_result():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE) == [VERSIONS["image_base"]]
    install = dockerfile[dockerfile.index("RUN bash scripts/install_system_deps.sh"):]
    assert "scripts/install_project.sh" in install
    assert "scripts/check_image_versions.py image" in install


def test_bash_and_python_read_the_same_values():
    keys = [k for k in VERSIONS if k != "image_tensorrt_llm"]
    printed = sourced("source scripts/image_versions.env; " + "; ".join(f'echo "${k}"' for k in keys))
    assert dict(zip(keys, printed.splitlines())) == {k: VERSIONS[k] for k in keys}
    assert VERSIONS["image_tensorrt_llm"] == "1.3.0rc24"


@pytest.mark.parametrize("is_312", [True, False])
def test_megatron_core_follows_the_python(tmp_path, is_312):
    # A stand-in interpreter that answers the script's version question.
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexit {0 if is_312 else 1}\n")
    python.chmod(0o755)
    got = sourced(f"source scripts/packages.sh; megatron_core_for {python}")
    assert got == (f"megatron-core=={VERSIONS['image_megatron_core']}" if is_312 else "megatron-core==0.16.1")


def test_the_running_pythons_megatron_core_is_the_one_chosen_for_it():
    from importlib.metadata import version

    assert sourced(f"source scripts/packages.sh; megatron_core_for {sys.executable}") == \
        f"megatron-core=={version('megatron-core')}"


def test_check_compares_exact_versions_and_ranges():
    assert civ.matches("2.3.5", ">=2.0,<2.4")
    assert not civ.matches("2.4.0", ">=2.0,<2.4")
    assert civ.matches("5.5.4", "5.5.4") and not civ.matches("5.25.0", "5.5.4")
    assert not civ.matches(None, "3.1.0")


def test_check_knows_what_the_image_and_the_lane_each_carry(monkeypatch):
    python = ".".join(map(str, sys.version_info[:2]))
    versions = {**VERSIONS, "image_python": python}
    exact = {"torch": "9.9", "transformers": VERSIONS["image_transformers"], "datasets": "0.1",
             "numpy": "2.3.5", "megatron-core": VERSIONS["image_megatron_core"],
             "transformer-engine": None, "tensorrt_llm": None}
    monkeypatch.setattr(civ, "installed", exact.get)
    _, in_image = civ.problems("image", versions)
    _, in_lane = civ.problems("lane", versions)
    # The image keeps NGC's torch (not checked) but must have TensorRT-LLM; the lane has no TRT-LLM.
    assert [p.split()[0] for p in in_image] == ["datasets", "tensorrt_llm"]
    assert [p.split()[0] for p in in_lane] == ["torch", "datasets"]
    assert f"image_datasets={VERSIONS['image_datasets']}" in in_lane[1]


def test_lane_stops_with_one_clear_line_without_a_python_312():
    env = {**os.environ, "PYTHON_IMAGE": "/bin/false"}
    done = subprocess.run(["bash", "scripts/image_lane.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"image_lane: no Python {VERSIONS['image_python']} interpreter (/bin/false is not one): "
                           f"install one (pyenv install {VERSIONS['image_python']}) or point PYTHON_IMAGE at it\n")
