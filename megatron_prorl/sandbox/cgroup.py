"""cgroup v1 groups nested under this process's own cgroup: a pids cap (stops fork bombs, also
for root, whom RLIMIT_NPROC does not limit), a memory cap (touched-memory bombs and tmpfs
files), and killing everything inside at once (orphans that escaped their process group
included; the pids cap keeps them from outrunning the kill).

Only v1 hierarchies whose directory we may write are used (root, or a delegated tree). cgroup v2
is not used: its no-internal-processes rule forbids enabling controllers below a cgroup that
holds processes, which is where a trainer usually sits.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from functools import lru_cache
from typing import Iterable, Optional

# Every group is made in exactly these: a group found by name (remove_matching) has directories
# in no other controller.
CONTROLLERS = ("pids", "memory")


@lru_cache(maxsize=1)
def _mounts() -> dict[str, str]:
    """controller -> mount point, for the v1 controllers we use."""
    mounts: dict[str, str] = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                _, mountpoint, fstype, options = line.split()[:4]
                if fstype == "cgroup":
                    for opt in options.split(","):
                        if opt in CONTROLLERS:
                            mounts[opt] = mountpoint
    except OSError:
        pass
    return mounts


def own_dirs() -> dict[str, str]:
    """controller -> this process's cgroup directory (read each time: processes move)."""
    mounts = _mounts()
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    dirs = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in mounts:
                dirs[controller] = os.path.join(mounts[controller], path.lstrip("/"))
    return dirs


def writable_controllers() -> tuple[str, ...]:
    """The controllers under which this process can create child groups."""
    return tuple(c for c, d in own_dirs().items() if os.access(d, os.W_OK) and os.path.isdir(d))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroup:
    """One group, created in each writable controller as ``<own cgroup>/<name>``."""

    def __init__(self, name: str, controllers: Optional[Iterable[str]] = None):
        self.name = name
        wanted = writable_controllers() if controllers is None else controllers
        own = own_dirs()
        self.dirs = {c: os.path.join(own[c], name) for c in wanted if c in own}

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(self.dirs)

    def create(self, pids_max: Optional[int] = None, memory_bytes: Optional[int] = None) -> "Cgroup":
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        if pids_max is not None and "pids" in self.dirs:
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(pids_max))
        if memory_bytes is not None and "memory" in self.dirs:
            mem = self.dirs["memory"]
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
            swap = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if os.path.exists(swap):  # no escape into swap
                _write(swap, str(memory_bytes))
        return self

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the caller) into the group; call before it forks anything."""
        for path in self.procs_files():
            _write(path, str(pid or os.getpid()))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files():
            try:
                with open(path) as f:
                    found.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return found

    def kill_all(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process in the group until none is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"cgroup {self.name}: processes {sorted(pids)[:10]} survive SIGKILL")
            time.sleep(0.001)

    def remove(self, timeout_s: float = 5.0) -> None:
        """Kill what is left and delete the group's directories."""
        self.kill_all(timeout_s)
        deadline = time.monotonic() + timeout_s
        for d in self.dirs.values():
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY until exiting tasks are released
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)


def remove_matching(prefix: str, keep=lambda name: False) -> int:
    """Kill and remove this process's child groups whose name starts with ``prefix`` (left over
    by a killed worker or a crashed run), except those ``keep(name)`` protects."""
    names: set[str] = set()
    for d in (own_dirs().get(c) for c in writable_controllers()):
        try:
            names.update(n for n in os.listdir(d) if n.startswith(prefix) and not keep(n))
        except OSError:
            pass
    for name in names:
        Cgroup(name).remove()
    return len(names)
