"""cgroup groups: a left-over group found by name is killed and removed whatever other v1
controllers the host lets us write (a freezer among them once made this crash)."""

from __future__ import annotations

import os
import subprocess

import pytest

from megatron_prorl.sandbox import cgroup


def test_a_left_over_group_is_killed_and_removed_by_name():
    if "pids" not in cgroup.writable_controllers():
        pytest.skip("cgroup v1 pids controller not writable here (needs root): no groups to leave over")
    prefix = f"prorl-test-leftover-{os.getpid()}-"
    # Made as the sandbox makes its groups: pids and memory only.
    controllers = [c for c in ("pids", "memory") if c in cgroup.writable_controllers()]
    group = cgroup.Cgroup(prefix + "0", controllers).create(pids_max=8)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        group.join(sleeper.pid)
        assert sleeper.pid in group.pids()
        assert cgroup.remove_matching(prefix) == 1
        assert sleeper.wait(timeout=5) == -9
        assert not any(os.path.exists(d) for d in group.dirs.values())
    finally:
        sleeper.kill()
        sleeper.wait()
