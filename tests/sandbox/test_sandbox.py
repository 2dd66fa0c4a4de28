"""The adversarial corpus: hostile programs through the real code verifier, in every sandbox
mode this machine supports. Each must score 0 (or its honest partial score) and leave the host
as it was: no connection reached the listener, no file outside the sandbox was written, read
or deleted, no secret leaked, the stand-in trainer process survives, no process is left over.

The module runs inside a pids/memory-capped cgroup (``capped_cgroup``), so a sandbox bug fails
a test instead of taking the machine down. The fork bomb runs last, after the caps were shown
to hold on a harmless many-process program.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from megatron_prorl.config import RewardsConfig
from megatron_prorl.sandbox import confine
from megatron_prorl.domains.code import STARTUP_GRACE_S, verify_code
from megatron_prorl.sandbox.sandbox import NOBODY, Sandbox, SandboxUnavailable

REPO = Path(__file__).resolve().parents[2]
CFG = RewardsConfig(code_timeout_s=1.0, code_memory_mb=512, code_max_processes=32)
MAX_WALL_S = CFG.code_timeout_s + STARTUP_GRACE_S + 1.5
ONE_TEST = {"inputs": ["\n"], "outputs": ["ESCAPED\n"]}  # the program prints ESCAPED only if it got out


def _variant(name: str) -> Sandbox:
    if name == "bwrap":
        if shutil.which("bwrap") is None:
            pytest.skip("bubblewrap is not installed (scripts/install_system_deps.sh installs it)")
        try:
            return Sandbox("bwrap")
        except SandboxUnavailable as exc:
            pytest.skip(f"bubblewrap does not work here: {exc}")
    box = Sandbox("rlimit")
    if name == "rlimit-unprivileged":
        # What a user without root or user namespaces gets: no uid drop, no network namespace;
        # only seccomp (network) and Landlock (files, signals) stand between program and host.
        if not (box.setup.seccomp and box.setup.landlock_abi >= 6):
            pytest.skip(f"needs seccomp and Landlock ABI >= 6 (seccomp {box.setup.seccomp}, "
                        f"Landlock ABI {box.setup.landlock_abi})")
        box.setup = dataclasses.replace(box.setup, drop_uid=False, namespaces=False)
    return box


@pytest.fixture(scope="module", params=["bwrap", "rlimit", "rlimit-unprivileged"])
def sandbox(request, capped_cgroup):
    return _variant(request.param)


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    """The tests run sandboxes from this process, not from a pool worker: make it the reaper of
    their orphans, as a worker is (this machine's PID 1 does not reap zombies)."""
    confine.set_child_subreaper()
    yield
    confine.prctl(confine.PR_SET_CHILD_SUBREAPER, 0)


def reap_orphan_zombies() -> None:
    for child in psutil.Process().children():
        if child.status() == psutil.STATUS_ZOMBIE:
            os.waitpid(child.pid, 0)


@pytest.fixture
def trainer_stand_in():
    """A process of the host's user standing in for the trainer the program would like to kill."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def host_dir():
    """A world-writable directory outside the sandbox, holding a world-readable file."""
    path = tempfile.mkdtemp(prefix="prorl-host-", dir="/tmp")
    os.chmod(path, 0o777)
    victim = os.path.join(path, "victim.txt")
    with open(victim, "w") as f:
        f.write("host secret 7f3a")
    os.chmod(victim, 0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(sandbox: Sandbox, code: str, gt=ONE_TEST, cfg: RewardsConfig = CFG):
    start = time.monotonic()
    result = verify_code(f"```python\n{code}\n```", gt, cfg, sandbox=sandbox)
    elapsed = time.monotonic() - start
    reap_orphan_zombies()
    assert elapsed < MAX_WALL_S, f"took {elapsed:.1f} s"
    return result


def leftovers(capped_cgroup, *keep: int) -> set[int]:
    """Processes started during the test that are still alive (none should be)."""
    if capped_cgroup is not None:
        alive = capped_cgroup.pids()
    else:
        alive = {p.pid for p in psutil.Process().children(recursive=True)}
    return alive - {os.getpid(), *keep}


def test_infinite_loop(sandbox, capped_cgroup):
    result = run(sandbox, "while True:\n    pass")
    assert result.reward == 0.0 and result.reason.startswith("time limit exceeded")
    assert not leftovers(capped_cgroup)


def test_busy_threads(sandbox, capped_cgroup):
    code = ("import threading\n"
            "def spin():\n    while True:\n        pass\n"
            "for _ in range(16):\n    threading.Thread(target=spin, daemon=True).start()\n"
            "spin()")
    assert run(sandbox, code).reward == 0.0
    assert not leftovers(capped_cgroup)


def test_busy_threads_stay_on_one_cpu(sandbox):
    code = ("import os\n"
            "try:\n    os.sched_setaffinity(0, set(range(os.cpu_count())))\nexcept OSError:\n    pass\n"
            "print('ESCAPED' if len(os.sched_getaffinity(0)) > 1 else 'PINNED')")
    result = run(sandbox, code)
    assert result.reward == 0.0 and result.details["tests"] == ["wrong_answer"]


@pytest.mark.parametrize("code", [
    "x = bytearray(b'x') * (4 << 30)",  # one big touched allocation
    "chunks = []\nwhile True:\n    chunks.append(b'x' * (64 << 20))",  # creeping growth
], ids=["one-block", "creeping"])
def test_memory_bomb(sandbox, capped_cgroup, code):
    result = run(sandbox, code + "\nprint('ESCAPED')")
    assert result.reward == 0.0
    assert not leftovers(capped_cgroup)


def test_network_to_local_listener(sandbox):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    code = f"""
import socket
got_out = False
try:
    s = socket.create_connection(("127.0.0.1", {tcp.getsockname()[1]}), timeout=2)
    s.sendall(b"escaped")
    got_out = True
except OSError:
    pass
try:
    import _socket
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    s.sendto(b"escaped", ("127.0.0.1", {udp.getsockname()[1]}))
    got_out = True
except OSError:
    pass
print("ESCAPED" if got_out else "BLOCKED")
"""
    try:
        result = run(sandbox, code)
        assert result.reward == 0.0 and result.details["tests"] == ["wrong_answer"]
        tcp.setblocking(False)
        udp.setblocking(False)
        with pytest.raises(BlockingIOError):
            tcp.accept()  # nothing ever connected
        with pytest.raises(BlockingIOError):
            udp.recvfrom(64)
    finally:
        tcp.close()
        udp.close()


def test_write_outside_working_directory(sandbox, host_dir):
    targets = [os.path.join(host_dir, "escaped.txt"), os.path.join(os.getcwd(), f"escaped-{uuid.uuid4().hex}")]
    code = f"""
got_out = False
for path in {targets!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
        got_out = True
    except OSError:
        pass
with open("inside.txt", "w") as f:  # the private working directory is writable
    f.write("fine")
print("ESCAPED" if got_out else "BLOCKED")
"""
    result = run(sandbox, code)
    assert result.reward == 0.0 and result.details["tests"] == ["wrong_answer"]
    assert not any(os.path.exists(t) for t in targets)


def test_delete_host_files(sandbox, host_dir):
    code = f"""
import os, shutil
got_out = False
for attempt in (lambda: os.remove({host_dir!r} + "/victim.txt"), lambda: shutil.rmtree({host_dir!r})):
    try:
        attempt()
        got_out = True
    except OSError:
        pass
print("ESCAPED" if got_out else "BLOCKED")
"""
    assert run(sandbox, code).reward == 0.0
    assert os.path.isfile(os.path.join(host_dir, "victim.txt"))


def test_read_secrets(sandbox, host_dir, monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("PRORL_TEST_SECRET", secret)  # inherited by a careless sandbox
    # A trainer-like process that holds the secret from its start: /proc/<pid>/environ shows it.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, "PRORL_TEST_SECRET": secret})
    code = f"""
import glob, os
found = os.environ.get("PRORL_TEST_SECRET", "")
for path in glob.glob("/proc/*/environ"):
    try:
        data = open(path, "rb").read()
    except OSError:
        continue
    if b"PRORL_TEST_SECRET=" in data:
        found = data.split(b"PRORL_TEST_SECRET=")[1].split(b"\\0")[0].decode()
try:
    found = found or open({host_dir!r} + "/victim.txt").read()
except OSError:
    pass
print(found or "NOTHING")  # either secret passes one of the two tests
"""
    gt = {"inputs": ["\n", "\n"], "outputs": [secret + "\n", "host secret 7f3a\n"]}
    try:
        result = run(sandbox, code, gt)
    finally:
        holder.kill()
        holder.wait()
    assert result.reward == 0.0 and result.details["tests"] == ["wrong_answer", "wrong_answer"]


def test_kill_the_parent(sandbox, trainer_stand_in, capped_cgroup):
    # kill(-1) (everything the uid may signal) only where the program cannot be root outside:
    # should the confinement fail for a root program, it would take down the whole machine.
    as_nobody = sandbox.mode == "bwrap" or sandbox.setup.drop_uid
    code = f"""
import os, signal
got_out = False
targets = [os.getppid(), {trainer_stand_in.pid}] + ([-1] if {as_nobody} else [])
for pid in targets:
    try:
        os.kill(pid, signal.SIGKILL)
        got_out = got_out or pid != os.getppid()
    except OSError:
        pass
print("ESCAPED" if got_out else "BLOCKED")
"""
    result = run(sandbox, code)
    assert result.reward == 0.0
    assert trainer_stand_in.poll() is None, "the stand-in trainer was killed"
    assert not leftovers(capped_cgroup, trainer_stand_in.pid)


def test_fill_the_disk(sandbox):
    if sandbox.mode == "rlimit" and not sandbox.setup.namespaces:
        pytest.skip("without namespaces the working directory is on the host disk: only per-file "
                    "(RLIMIT_FSIZE) and wall-clock bounds apply")
    code = ("written = 0\ntry:\n    for i in range(1000):\n        with open(f'f{i}', 'wb') as f:\n"
            "            f.write(b'x' * (16 << 20))\n        written += 16\nexcept OSError:\n    pass\n"
            "print('ESCAPED' if written > CAP else 'CAPPED')").replace("CAP", str(CFG.code_memory_mb))
    result = run(sandbox, code)
    assert result.reward == 0.0 and result.details["tests"] == ["wrong_answer"]


def test_flood_stdout(sandbox):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)"
    result = run(sandbox, code)
    assert result.reward == 0.0 and result.details["tests"] == ["output_limit"]


def test_ctypes_crash_scores_honestly(sandbox):
    # The segfault fails its own test only; the other test still runs and passes.
    code = "import ctypes\nif input().strip() == 'crash':\n    ctypes.string_at(0)\nprint('ok')"
    gt = {"inputs": ["crash\n", "fine\n"], "outputs": ["ok\n", "ok\n"]}
    result = run(sandbox, code, gt)
    assert result.reward == 0.5 and result.details["tests"] == ["crashed", "passed"]


def test_seccomp_blocks_network_without_namespaces(capped_cgroup):
    """The fallback's 'otherwise' mechanism on its own: no namespace, no Landlock, only seccomp."""
    if not confine.seccomp_supported():
        pytest.skip("seccomp is not available on this kernel/architecture")
    box = Sandbox("rlimit")
    box.setup = dataclasses.replace(box.setup, namespaces=False, landlock_abi=0)
    code = "import socket\ntry:\n    socket.socket()\n    print('ESCAPED')\nexcept PermissionError:\n    print('EPERM')"
    result = run(box, code, {"inputs": ["\n"], "outputs": ["EPERM\n"]})
    assert result.reward == 1.0


def test_unprivileged_user(capped_cgroup, host_dir):
    """Both modes as a user without root (no cgroups, no uid drop; user namespaces, seccomp and
    Landlock only), run under setpriv with the system interpreter and this checkout."""
    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to become an unprivileged user")
    paths = sysconfig.get_paths()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([str(REPO), paths["purelib"], paths["platlib"]])}
    as_nobody = [setpriv, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", python]
    check = subprocess.run(as_nobody + ["-c", "import sys; assert sys.version_info[:2] == %r; "
                                        "import megatron_prorl.rewards" % (sys.version_info[:2],)],
                           env=env, capture_output=True, text=True, cwd="/tmp")
    if check.returncode != 0:
        pytest.skip(f"an unprivileged {python} cannot import this checkout: {check.stderr[-300:]}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        proc = subprocess.run(as_nobody + [str(REPO / "tests/sandbox/unprivileged_probe.py"),
                                           str(listener.getsockname()[1]), host_dir],
                              env=env, capture_output=True, text=True, cwd="/tmp", timeout=120)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in reports] == ["bwrap", "rlimit"], proc.stderr[-2000:]
    for report in reports:
        if "unavailable" in report:
            assert report["mode"] == "bwrap", report  # the fallback must always work
            continue
        assert report["uid"] == NOBODY and report["describe"]["cgroup"] == []
        assert report["rewards"] == {"network": 0.0, "write": 0.0, "kill": 0.0, "fork_bomb": 0.0}, report
    assert not os.path.exists(os.path.join(host_dir, "escaped.txt"))
    assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == NOBODY]


def test_many_processes_are_capped(sandbox, capped_cgroup):
    """Harmless: sleeping children, to show the process cap holds before the fork bomb runs."""
    code = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
            "    n += 1\nprint(n)")
    result = run(sandbox, code, {"inputs": ["\n"], "outputs": ["200\n"]})
    assert result.reward == 0.0 and result.details["tests"] == ["wrong_answer"]
    assert not leftovers(capped_cgroup)
    if sandbox.mode == "bwrap" or sandbox.setup.drop_uid:
        assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == NOBODY]


def test_fork_bomb(sandbox, capped_cgroup):
    code = "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass"
    result = run(sandbox, code)
    assert result.reward == 0.0
    assert not leftovers(capped_cgroup)
    assert psutil.Process().is_running()
