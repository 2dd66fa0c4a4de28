"""Shared test helpers live in tests/helpers/ (``from helpers.x import ...``): pytest puts this
conftest's directory, tests/, on sys.path. tests/ mirrors the packages (tests/train for
megatron_prorl/train, ...)."""

import os
import subprocess

import pytest

from megatron_prorl.sandbox import cgroup


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """An uninterrupted 3-step run of helpers.runs.write_config(): the yardstick for the resume,
    fault and layout tests."""
    from helpers.runs import run_ok, write_config

    tmp = tmp_path_factory.mktemp("ref")
    out = run_ok("train", write_config(tmp))
    return tmp / "run", out


@pytest.fixture(scope="module")
def capped_cgroup():
    """Run the module's tests inside a pids- and memory-capped cgroup (when cgroups are
    writable, i.e. as root): if the sandbox ever let a fork or memory bomb through, the cap turns
    it into a failed test instead of a starved machine. Whatever is left inside is killed at the
    end. Pool workers and sandboxes started by the tests nest under it."""
    controllers = cgroup.writable_controllers()
    if "pids" not in controllers:
        yield None  # not root: the sandbox's RLIMIT_NPROC is the cap
        return
    home = {c: d for c, d in cgroup.own_dirs().items() if c in controllers}
    group = cgroup.Cgroup(f"prorl-test-{os.getpid()}", controllers).create(pids_max=256, memory_bytes=6 << 30)
    group.join()
    try:
        yield group
    finally:
        for directory in home.values():
            with open(os.path.join(directory, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        group.remove()


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)``: a tmpfs of ``size`` ("4m") mounted under tmp_path, for full-disk tests
    (mounting needs root: the test is skipped, saying so, where it cannot mount)."""
    mounts = []

    def mount(size: str):
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root; the full-disk test needs a small disk")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the full-disk test needs a small disk")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)
