"""A real Slurm cluster on this machine: munged, slurmctld and four slurmd's (virtual nodes
n1..n4, each with 8 fake GPUs), all in a private directory, stopped through their pid files.

What it takes is written up in ../shared/notes/local-slurm.md (Debian 12, Slurm 22.05).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from megatron_prorl.runtime.distributed import free_port

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODES = ("n1", "n2", "n3", "n4")
GPUS_PER_NODE = 8
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


class SlurmUnavailable(Exception):
    """Slurm cannot run here; the message says why (a test skips with it)."""


def prepare_host() -> None:
    """Check that this host can run the cluster (its daemons run as root) and install the Debian
    packages when a command is missing."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("not root: the local cluster's daemons run as root (SlurmUser=root)")
    if all(shutil.which(c) for c in ("slurmctld", "slurmd", "sbatch", "munged", "mungekey")):
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"Slurm is not installed and there is no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr[-500:]}")


@dataclass
class Job:
    id: str
    state: str
    exit_code: str  # "rc:signal"
    restarts: int
    fields: dict


class LocalSlurm:
    def __init__(self):
        # Short, o+x path: munged's socket directory and all its parents must be searchable.
        self.root = Path(tempfile.mkdtemp(prefix="prorl-slurm-", dir="/tmp"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files: list[Path] = []

    # ------------------------------------------------------------------------ start
    def start(self, timeout: float = 60.0) -> None:
        self._start_munge()
        self._write_config()
        self._daemon(["slurmctld"], self.root / "slurmctld.pid")
        for node in NODES:
            self._daemon(["slurmd", "-N", node], self.root / f"slurmd.{node}.pid")
        deadline = time.monotonic() + timeout
        while True:
            states = self.node_states()
            if len(states) == len(NODES) and all(s == "idle" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes not idle after {timeout:.0f} s: {states}\n{self.logs()}")
            time.sleep(0.5)

    def _start_munge(self) -> None:
        key_dir, sock_dir = self.root / "munge-key", self.root / "munge"
        key_dir.mkdir(mode=0o700)
        sock_dir.mkdir(mode=0o755)
        key = key_dir / "munge.key"
        self._run(["mungekey", "--create", f"--keyfile={key}"])
        self.munge_socket = sock_dir / "munge.socket"
        pid = self.root / "munged.pid"
        self._daemon(["munged", f"--key-file={key}", f"--socket={self.munge_socket}", f"--pid-file={pid}",
                      f"--log-file={self.root / 'munged.log'}", f"--seed-file={key_dir / 'munge.seed'}"], pid)
        check = subprocess.run(f"munge -S {self.munge_socket} -n | unmunge -S {self.munge_socket}", shell=True,
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"munge does not work: {check.stderr}\n{self.logs()}")

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        mem_mb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) // 1024
        ports = [free_port() for _ in range(1 + len(NODES))]
        fake = self.root / "fakedev"
        fake.mkdir()
        for i in range(GPUS_PER_NODE):
            (fake / f"nvidia{i}").symlink_to("/dev/null")
        (self.root / "gres.conf").write_text(
            f"AutoDetect=off\nName=gpu File={fake}/nvidia[0-{GPUS_PER_NODE - 1}]\n")
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=prorltest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.%n.pid",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd.%n.log",
            f"SlurmctldPort={ports[0]}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "MpiDefault=none", "SwitchType=switch/none", "MailProg=/bin/true",
            "ReturnToService=2", "SlurmdParameters=config_overrides", "GresTypes=gpu",
            # Short grace (SIGTERM -> SIGKILL) when a job ends or is requeued.
            "KillWait=5",
            *(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=2 "
              f"RealMemory={mem_mb // 2} Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
              for node, port in zip(NODES, ports[1:])),
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        (r / "state").mkdir()
        for node in NODES:
            (r / "spool" / node).mkdir(parents=True)

    def _daemon(self, argv: list[str], pid_file: Path) -> None:
        self.pid_files.append(pid_file)
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}\n{self.logs()}")
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} wrote no pid file {pid_file}\n{self.logs()}")
            time.sleep(0.1)

    # ------------------------------------------------------------------------ use
    def _run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 60)
        env = {**self.env, **kwargs.pop("env", {})}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, **kwargs)
        read_only = argv[0] in ("squeue", "sinfo") or argv[:2] == ["scontrol", "show"]
        if done.returncode < 0 and read_only:
            # A query killed by a signal (SIGPIPE from its own daemon socket was seen on a loaded
            # machine) asks again once: it changes nothing on the cluster.
            done = subprocess.run(argv, env=env, capture_output=True, text=True, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr}")
        return done

    def node_states(self) -> dict[str, str]:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True,
                             timeout=30).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def sbatch(self, args: list[str], cwd: Path, env: dict | None = None) -> str:
        return self._run(["sbatch", "--parsable", *map(str, args)], cwd=cwd, env=env or {}).stdout.strip()

    def job(self, job_id: str) -> Job:
        out = self._run(["scontrol", "show", "job", "-o", job_id]).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", out))
        return Job(job_id, fields["JobState"], fields["ExitCode"], int(fields.get("Restarts", 0)), fields)

    def wait_until(self, job_id: str, predicate, timeout: float, what: str) -> Job:
        """Poll the job until ``predicate(job)``; a job that never gets there (a request the
        cluster cannot satisfy stays PENDING forever) fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not {what} after {timeout:.0f} s: {job.fields}")
            time.sleep(0.5)

    def wait_finished(self, job_id: str, timeout: float) -> Job:
        return self.wait_until(job_id, lambda j: j.state in FINISHED, timeout, "finished")

    def logs(self, lines: int = 15) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # ------------------------------------------------------------------------ stop
    def stop(self, timeout: float = 30.0) -> list[str]:
        """Cancel every job, stop the daemons through their pid files, then end whatever of this
        cluster is left (job steps carry this cluster's SLURM_CONF in their environment).
        Returns what had to be killed; never raises."""
        killed = []
        try:
            subprocess.run(["scancel", "--quiet", "--user=root"], env=self.env, capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and subprocess.run(
                    ["squeue", "-h", "-t", "running,completing"], env=self.env, capture_output=True, text=True,
                    timeout=30).stdout.strip():
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass
        for pid_file in reversed(self.pid_files):  # slurmd's, slurmctld, then munged
            pid = _read_pid(pid_file)
            if pid is not None and _terminate(pid, timeout=10):
                killed.append(f"{pid_file.name} (pid {pid}) needed SIGKILL")
        for pid in self.leftover_pids():
            _terminate(pid, timeout=5)
            killed.append(f"leftover pid {pid}")
        return killed

    def leftover_pids(self) -> list[int]:
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True when SIGKILL was needed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return False
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True
