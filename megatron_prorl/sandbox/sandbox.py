"""Running model-written (hostile) programs.

Every program runs in its own session and process group, in a fresh private working directory,
with a scrubbed environment, rlimits (CPU, address space, file size, open files, no core dumps),
pinned to one CPU, under a seccomp filter (no ``socket()`` of any family, no io_uring, ptrace,
process_vm_* or CPU re-pinning), with a wall-clock timeout that kills everything it started and
capped stdout/stderr. On top:

- ``bwrap`` mode (bubblewrap): new user, PID, network, IPC, UTS and cgroup namespaces; only
  ``/usr`` visible (read-only), a private tmpfs as ``/tmp`` and working directory, uid nobody,
  dies with its parent. Killing the sandbox's init kills its whole PID namespace.
- ``rlimit`` mode (no usable bubblewrap): where ``unshare`` is permitted (root, or unprivileged
  user namespaces) new network, IPC, UTS, mount and PID namespaces (the harness's first child is
  the init: its end kills everything inside) with a size-capped tmpfs as the working directory;
  else the seccomp filter alone keeps it off the network. Landlock
  (Linux >= 5.13) confines the filesystem to read-only ``/usr`` plus the working directory and,
  on newer kernels, forbids TCP and signals to processes outside the sandbox; uid nobody when
  started as root. What the kernel lacks is named in a warning.

In both modes, where cgroup v1 is writable (root), each program gets its own pids and memory
cgroup: ``pids.max`` stops fork bombs (RLIMIT_NPROC does not bind root) and the memory limit
covers touched memory and tmpfs files; the cgroup is killed as a whole at the end. Without
cgroups, RLIMIT_NPROC is set relative to the processes the user already has. (Joining a v1
cgroup costs a few ms of waiting per controller, hence two controllers, not four.)
"""

from __future__ import annotations

import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import count
from typing import Optional

from megatron_prorl.sandbox import cgroup, confine
from megatron_prorl.sandbox.harness import reap_orphans  # stdlib-only: also runs inside the sandbox

log = logging.getLogger(__name__)

NOBODY = 65534
MODES = ("auto", "bwrap", "rlimit")
_CGROUP_PREFIX = "prorl-sb-"
_serial = count()


class SandboxUnavailable(RuntimeError):
    """The requested sandbox cannot run here (the message says what is missing)."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 7.0
    cpu_s: int = 7
    memory_mb: int = 1024
    max_procs: int = 64
    file_size_mb: int = 64
    open_files: int = 128
    stdout_bytes: int = 16 << 20
    stderr_bytes: int = 64 << 10


@dataclass
class RunResult:
    returncode: Optional[int]
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    output_exceeded: bool = False
    wall_s: float = 0.0


@dataclass(frozen=True)
class _Setup:
    """How a sandbox is started, resolved once per process by :func:`_resolve`."""

    mode: str
    python: str
    drop_uid: bool = False  # setuid(nobody) before exec (started as root)
    # rlimit mode: new network, IPC, UTS and mount namespaces, the working directory a tmpfs
    namespaces: bool = False
    seccomp: bool = False  # both modes (bwrap loads it with --seccomp)
    landlock_abi: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


def _python_tree(python: str) -> Optional[str]:
    """The installation prefix to expose when the interpreter does not live under /usr."""
    real = os.path.realpath(python)
    return None if real.startswith("/usr/") else os.path.dirname(os.path.dirname(real))


def _env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}


def _tasks_of(uid: int) -> int:
    """Tasks (threads count: RLIMIT_NPROC counts them) owned by ``uid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    total += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return total


def _kill_children() -> None:
    """SIGKILL and reap this process's children until none is left (orphans of a sandbox that
    re-parented here because this process is a child subreaper)."""
    me = str(os.getpid())
    for _ in range(1000):
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                if stat.rsplit(")", 1)[1].split()[1] == me:
                    children.append(int(entry))
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _next_cpu() -> int:
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[(os.getpid() + next(_serial)) % len(allowed)]


class _Child:
    """The preexec_fn: runs in the forked child before exec; only system calls, all inputs
    prepared by the parent. (bwrap mode loads the seccomp filter itself, after its setup.)"""

    def __init__(self, setup: _Setup, limits: Limits, group: Optional[cgroup.Cgroup], workdir: Optional[str],
                 seccomp_program: Optional[bytes], nproc: Optional[int]):
        self.setup, self.limits, self.workdir = setup, limits, workdir
        self.procs_files = group.procs_files() if group else []
        self.seccomp_program = seccomp_program if setup.mode == "rlimit" else None
        self.nproc = nproc
        self.cpu = _next_cpu()
        self.parent = os.getpid()
        self.ids = (os.geteuid(), os.getegid())
        tree = _python_tree(setup.python)
        self.landlock = None
        if setup.mode == "rlimit" and setup.landlock_abi and workdir:
            self.landlock = confine.LandlockPolicy(read_only=("/usr",) + ((tree,) if tree else ()), writable=workdir)

    def __call__(self) -> None:
        pid = str(os.getpid())
        for path in self.procs_files:  # before anything can fork
            with open(path, "w") as f:
                f.write(pid)
        confine.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.parent:
            os._exit(1)  # the parent died before the death signal was armed
        os.sched_setaffinity(0, {self.cpu})
        setup, lim = self.setup, self.limits
        if setup.namespaces:
            # CLONE_NEWPID: the harness's first child becomes the namespace's init (harness.py)
            flags = (confine.CLONE_NEWNET | confine.CLONE_NEWIPC | confine.CLONE_NEWUTS | confine.CLONE_NEWNS
                     | confine.CLONE_NEWPID)
            if self.ids[0] == 0:
                confine.unshare(flags)
            else:  # unprivileged: a user namespace makes the others possible
                confine.unshare(flags | confine.CLONE_NEWUSER)
                confine.map_own_ids(*self.ids)
            confine.mount_private_tmpfs(self.workdir, lim.memory_mb << 19, NOBODY if setup.drop_uid else None)
            os.chdir(self.workdir)  # onto the tmpfs now mounted over it
        mb = 1 << 20
        limits = [(resource.RLIMIT_CPU, lim.cpu_s), (resource.RLIMIT_AS, lim.memory_mb * mb),
                  (resource.RLIMIT_FSIZE, lim.file_size_mb * mb), (resource.RLIMIT_NOFILE, lim.open_files),
                  (resource.RLIMIT_CORE, 0)]
        if self.nproc is not None:
            limits.append((resource.RLIMIT_NPROC, self.nproc))
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        if setup.drop_uid:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        if self.landlock is not None:
            self.landlock.apply(setup.landlock_abi)
        if self.seccomp_program is not None:
            confine.install_seccomp(self.seccomp_program)


class Sandbox:
    """Runs programs confined as the module docstring describes. One per process; cheap."""

    def __init__(self, mode: str = "auto", python: str = "/usr/bin/python3"):
        if mode not in MODES:
            raise ValueError(f"rewards.sandbox={mode!r}: expected one of {MODES}")
        self.setup = _resolve(mode, python)
        cgroup.remove_matching(_CGROUP_PREFIX, keep=_owner_alive)

    @property
    def mode(self) -> str:
        return self.setup.mode

    def describe(self) -> dict:
        s = self.setup
        return {"mode": s.mode, "python": s.python, "uid_nobody": s.drop_uid or s.mode == "bwrap",
                "cgroup": list(cgroup.writable_controllers()), "namespaces": s.namespaces or s.mode == "bwrap",
                "seccomp": s.seccomp, "landlock_abi": s.landlock_abi, "notes": list(s.notes)}

    def run(self, argv: list[str], stdin: bytes = b"", limits: Limits = Limits()) -> RunResult:
        """Run ``argv`` (an interpreter path under /usr, or the configured python) confined."""
        return _run(self.setup, argv, stdin, limits)


def _owner_alive(name: str) -> bool:
    try:
        os.kill(int(name[len(_CGROUP_PREFIX):].split("-")[0]), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


def cleanup_worker_cgroups(pid: int) -> int:
    """Remove the sandbox cgroups a (killed) process left behind."""
    return cgroup.remove_matching(f"{_CGROUP_PREFIX}{pid}-")


def _bwrap_command(setup: _Setup, argv: list[str], seccomp_fd: Optional[int], limits: Limits) -> list[str]:
    # --as-pid-1: the program's interpreter is the namespace's init, so its exit ends (and
    # reaps) everything inside; without it an unprivileged bwrap leaves its init as a zombie.
    cmd = ["bwrap", "--unshare-all", "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
           "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin"]
    tree = _python_tree(setup.python)
    if tree:
        cmd += ["--ro-bind", tree, tree]
    # tmpfs files live in memory: half the memory limit (the memory cgroup counts them too)
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.memory_mb << 19), "--tmpfs", "/tmp",
            "--chdir", "/tmp", "--remount-ro", "/",
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox", "--clearenv"]
    for key, value in _env("/tmp").items():
        cmd += ["--setenv", key, value]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return cmd + ["--"] + argv


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("prorl-seccomp", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@lru_cache(maxsize=1)
def _seccomp_program() -> bytes:
    return confine.build_seccomp_filter()


def _run(setup: _Setup, argv: list[str], stdin: bytes, limits: Limits) -> RunResult:
    workdir = None
    group = None
    seccomp = _seccomp_program() if setup.seccomp else None
    if setup.mode == "rlimit":
        workdir = tempfile.mkdtemp(prefix="prorl-sb-")
        if setup.drop_uid:
            os.chown(workdir, NOBODY, NOBODY)
    try:
        controllers = cgroup.writable_controllers()
        if controllers:
            group = cgroup.Cgroup(f"{_CGROUP_PREFIX}{os.getpid()}-{next(_serial)}", controllers).create(
                pids_max=limits.max_procs, memory_bytes=limits.memory_mb << 20)
        nproc = None
        if group is None or "pids" not in group.controllers:
            uid = NOBODY if setup.drop_uid else os.getuid()
            nproc = _tasks_of(uid) + limits.max_procs
        child = _Child(setup, limits, group, workdir, seccomp, nproc)
        seccomp_fd = _memfd(seccomp) if seccomp is not None and setup.mode == "bwrap" else None
        cmd = _bwrap_command(setup, argv, seccomp_fd, limits) if setup.mode == "bwrap" else argv
        start = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env={} if setup.mode == "bwrap" else _env(workdir), cwd=workdir or "/",
                                    start_new_session=True, preexec_fn=child, close_fds=True,
                                    pass_fds=() if seccomp_fd is None else (seccomp_fd,))
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(f"could not start the sandbox ({setup.mode}): {exc}") from exc
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)

        def kill() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            if group is not None:
                group.kill_all()

        try:
            result = _communicate(proc, stdin, start + limits.wall_s, limits, kill)
        finally:
            kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
        result.wall_s = time.monotonic() - start
        result.returncode = proc.returncode if not (result.timed_out or result.output_exceeded) else None
        return result
    finally:
        if group is not None:
            group.remove()
        if _subreaper:  # orphans of the run re-parented here: kill (without a cgroup) and reap
            if group is None:
                _kill_children()
            reap_orphans()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


_subreaper = False


def become_subreaper() -> None:
    """Call in a dedicated worker process that has no other children: orphans of a sandbox then
    re-parent to it and are killed and reaped after each run (without this, on hosts whose PID 1
    does not reap, each escaped orphan would stay a zombie)."""
    global _subreaper
    confine.set_child_subreaper()
    _subreaper = True


def _communicate(proc: subprocess.Popen, stdin: bytes, deadline: float, limits: Limits, kill) -> RunResult:
    """Feed stdin and collect capped stdout/stderr until the process exits, the deadline passes
    or an output cap is exceeded. When the main process exits, ``kill()`` ends whatever it left
    behind, then the pipes are drained (briefly: only an escaped orphan could hold them)."""
    sel = selectors.DefaultSelector()
    out, err = bytearray(), bytearray()
    readers = {proc.stdout.fileno(): (out, limits.stdout_bytes), proc.stderr.fileno(): (err, limits.stderr_bytes)}
    for fd in readers:
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    result = RunResult(None, b"", b"")
    exited = False
    try:
        while not exited or any(fd in sel.get_map() for fd in readers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.timed_out = not exited
                break
            for key, _ in sel.select(remaining):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    exited = True
                    kill()
                    deadline = min(deadline, time.monotonic() + 1.0)
                elif fd in readers:
                    chunk = os.read(fd, 1 << 16)
                    buf, cap = readers[fd]
                    if not chunk:
                        sel.unregister(fd)
                    elif len(buf) + len(chunk) > cap:
                        result.output_exceeded = True
                        return result
                    else:
                        buf += chunk
                else:  # stdin
                    try:
                        pending = pending[os.write(fd, pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
    finally:
        sel.close()
        os.close(pidfd)
        result.stdout, result.stderr = bytes(out), bytes(err)
    return result


@lru_cache(maxsize=None)
def _resolve(mode: str, python: str) -> _Setup:
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise SandboxUnavailable(f"rewards.code_python={python!r} is not an executable file")
    root = os.geteuid() == 0
    failures = []
    if mode in ("auto", "bwrap"):
        if shutil.which("bwrap") is None:
            failures.append("bwrap is not installed (scripts/install_system_deps.sh installs it)")
        else:
            for drop in ((True, False) if root else (False,)):
                setup = _Setup("bwrap", python, drop_uid=drop, seccomp=confine.seccomp_supported())
                problem = _probe(setup)
                if problem is None:
                    return setup
                failures.append(f"bwrap{' as nobody' if drop else ''}: {problem}")
        if mode == "bwrap":
            raise SandboxUnavailable("rewards.sandbox='bwrap' but bubblewrap does not work here: "
                                     + "; ".join(failures))
    abi = confine.landlock_abi()
    seccomp = confine.seccomp_supported()
    setup = None
    for namespaces in (True, False):
        candidate = _Setup("rlimit", python, drop_uid=root, namespaces=namespaces, seccomp=seccomp,
                           landlock_abi=abi)
        problem = _probe(candidate)
        if problem is None:
            setup = candidate
            break
        failures.append(f"rlimit{' + namespaces' if namespaces else ''}: {problem}")
    if setup is None:
        raise SandboxUnavailable("no sandbox works here: " + "; ".join(failures))
    if not (setup.namespaces or setup.seccomp):
        raise SandboxUnavailable("rlimit sandbox: neither a network namespace nor seccomp is available, so "
                                 "network access cannot be blocked; refusing to run code")
    missing = []
    if not setup.namespaces:
        missing.append("namespaces (network blocked by seccomp only; the working directory is on the "
                       "host's disk, bounded per file, not in total)")
    if not abi:
        missing.append("Landlock (files outside the working directory are protected by "
                       + ("uid nobody only)" if root else "nothing but file permissions)"))
    elif abi < 6:
        missing.append(f"Landlock ABI {abi} < 6 (signals to outside processes are not scoped)")
    if "pids" not in cgroup.writable_controllers():
        missing.append("writable cgroups (process count bounded by RLIMIT_NPROC, memory by RLIMIT_AS)")
    why = "rewards.sandbox='rlimit'" if mode == "rlimit" else "bubblewrap unusable: " + "; ".join(failures)
    message = (f"code sandbox: rlimit mode ({why}); seccomp {'on' if seccomp else 'off'}, network namespace "
               f"{'on' if setup.namespaces else 'off'}, Landlock ABI {abi}"
               + (". Missing: " + "; ".join(missing) if missing else ""))
    if mode == "auto":
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.log(logging.WARNING if mode == "auto" or missing else logging.INFO, message)
    notes = tuple(failures + missing)
    return _Setup(**{**setup.__dict__, "notes": notes})


def _probe(setup: _Setup) -> Optional[str]:
    """None when a trivial program runs under ``setup`` as expected, else what went wrong."""
    expect = str(NOBODY) if setup.mode == "bwrap" or setup.drop_uid else str(os.getuid())
    try:
        result = _run(setup, [setup.python, "-I", "-S", "-c", "import os; print(os.getuid())"], b"",
                      Limits(wall_s=10.0))
    except (SandboxUnavailable, OSError) as exc:
        return str(exc)
    got = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or got != expect:
        return f"exit {result.returncode}, stdout {got!r}, stderr {result.stderr.decode(errors='replace')[-300:]!r}"
    return None
