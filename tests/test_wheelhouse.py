"""scripts/make_wheelhouse.sh: a wheelhouse from which megatron-prorl installs without a network.

The wheelhouse is made once for the module with this machine's pip set-up (the connected machine).
The install then runs into a fresh venv inside a network namespace of its own (no interface but a
loopback that is down: nothing can be reached), with pip's configuration files and PIP_* variables
dropped, the index pointed at a closed local port, and --no-index. torch is not in the wheelhouse:
as the NGC container does, the environment provides it; here the torch of the Python running the
tests (with the NVIDIA wheels a CUDA build of it requires), put on the venv's path by a .pth file
(its other dependencies then come from the wheelhouse).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_wheelhouse.sh"
ACCELERATOR_PREFIXES = ("torch", "triton", "nvidia-", "cuda-")

IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
import checkpoint_convert, megatron_prorl, torch
print(megatron_prorl.__file__)
print(torch.__file__)
for pkg in (megatron_prorl, checkpoint_convert):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not mod.name.endswith(".__main__"):  # those run a CLI
            importlib.import_module(mod.name)
"""


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=kwargs.pop("timeout", 300), **kwargs)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheelhouse") / "wheels"
    run(["bash", str(SCRIPT), str(out)], env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)  # ~180 MB


def offline_prefix() -> list[str]:
    """A command prefix that runs the command in a new, empty network namespace."""
    for prefix in (["unshare", "--net"], ["unshare", "--net", "--map-root-user"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("no network namespace can be made here (unshare --net needs root or user namespaces)")


def offline_env() -> dict[str, str]:
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k.lower() not in proxies and k != "PYTHONPATH"}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def test_wheelhouse_pins_its_wheels_and_leaves_out_torch(wheelhouse):
    wheels = {}
    for path in wheelhouse.iterdir():
        if path.name != "requirements.txt":
            assert path.suffix == ".whl", f"not a wheel: {path.name}"
            name, version, _, _ = parse_wheel_filename(path.name)
            wheels[name] = str(version)
    lines = [ln for ln in (wheelhouse / "requirements.txt").read_text().splitlines() if not ln.startswith("#")]
    pinned = {canonicalize_name(name): version for name, version in (ln.split("==") for ln in lines)}
    assert pinned == wheels
    assert pinned["megatron-prorl"] == md.version("megatron-prorl")
    assert pinned["megatron-core"] == md.version("megatron-core")  # the one scripts/packages.sh picks for this Python
    assert {"langdetect", "transformers", "numpy"} <= set(pinned)  # langdetect is only an sdist on PyPI
    assert not [n for n in pinned if n.startswith(ACCELERATOR_PREFIXES)]
    left_out = [ln for ln in (wheelhouse / "requirements.txt").read_text().splitlines() if ln.startswith("# Not here")]
    assert "torch" in left_out[0].split(": ")[-1].split(", ")


def test_offline_install_into_a_fresh_venv(wheelhouse, tmp_path):
    prefix, env = offline_prefix(), offline_env()
    interfaces = run([*prefix, "cat", "/proc/net/dev"]).stdout.splitlines()[2:]
    assert [line.split(":")[0].strip() for line in interfaces] == ["lo"]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # torch and the accelerator packages installed with it (a CUDA build of torch requires NVIDIA's
    # CUDA wheels: the image lane's), as the container provides them.
    provided = tmp_path / "provided-torch"
    provided.mkdir()
    for dist in md.distributions():
        if canonicalize_name(dist.metadata["Name"]).startswith(ACCELERATOR_PREFIXES):
            for top in {f.parts[0] for f in dist.files or () if f.parts[0] != ".."} - set(os.listdir(provided)):
                (provided / top).symlink_to(dist.locate_file(top))
    (site / "provided-torch.pth").write_text(f"{provided}\n")

    try:
        # --no-compile: byte-compiling the ~600 MB installed takes longer than the install and is not
        # what this checks.
        pip = [*prefix, sys.executable, "-m", "pip", "--python", str(python)]
        run([*pip, "install", "--no-compile", "--no-index", "--find-links", str(wheelhouse), "megatron-prorl"],
            env=env)
        run([*pip, "check"], env=env)
        assert not (site / "torch").exists()  # the environment's torch stayed the one in use
        package, torch_file = run([*prefix, str(python), "-c", IMPORT_EVERY_MODULE], env=env, cwd=tmp_path
                                  ).stdout.split()
        assert package.startswith(str(site)) and torch_file.startswith(str(provided))
        for cli in ("prorl", "prorl-convert"):
            out = run([*prefix, str(venv / "bin" / cli), "--help"], env=env, cwd=tmp_path).stdout
            assert out.startswith(f"usage: {cli} ")
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~600 MB


def test_refuses_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "old.whl").write_text("")
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith(f"make_wheelhouse: {tmp_path} is not empty")
