"""Shared test helpers live in tests/helpers/ (``from helpers.x import ...``): pytest puts this
conftest's directory, tests/, on sys.path. tests/ mirrors the packages (tests/train for
megatron_prorl/train, ...)."""

import os

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
