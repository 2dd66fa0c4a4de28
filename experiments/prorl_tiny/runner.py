"""Run the study's units as subprocesses: resumable, a few at a time, with progress and an ETA.

- A unit is done when ``OUT/.done/UNIT.json`` records its exact command (written only after the
  command exits 0 and, for training, after its summary says every step ran). Done units are
  skipped; any other unit is (re)started with the same command, which resumes by itself:
  ``prorl train`` from its latest checkpoint, ``prorl eval`` from its complete chunks.
- Units run in their own sessions, one thread each (OMP_NUM_THREADS=1 unless set), up to
  ``jobs`` at a time, each as soon as the units it reads are done. Output goes to
  ``OUT/logs/UNIT.log``.
- SIGTERM or Ctrl-C: every running unit gets SIGTERM (``prorl train`` finishes its step and
  writes a checkpoint), the runner waits for them and exits. If the runner itself is killed,
  the kernel kills its units (PR_SET_PDEATHSIG), so a rerun never meets a leftover writer.
- A failed unit is reported with the end of its log and started once more (a shared machine
  fails a start now and then: a port taken between its choice and its use); if it fails again,
  units that do not need it go on and the runner exits 1.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from experiments.prorl_tiny.study import REPO, Budget, Unit, hours

PR_SET_PDEATHSIG = 1
ATTEMPTS = 2  # per unit and run of the study


class StudyError(Exception):
    """Bad input: one line, exit 2."""


def prorl_executable() -> str:
    found = shutil.which("prorl", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise StudyError("the `prorl` command is not installed next to this Python or on PATH "
                         "(bash scripts/install.sh installs it into .venv)")
    return found


def resolve(argv: Sequence[str]) -> list[str]:
    head = {"prorl": prorl_executable(), "python": sys.executable}.get(argv[0], argv[0])
    return [head, *(a.replace("{REPO}", str(REPO)) for a in argv[1:])]


def _die_with_parent(parent: int) -> None:
    """In the child: be killed when the runner dies (Linux), even if it died just before."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def file_name(unit: Unit) -> str:
    """The unit's name as one path component (its marker and log files)."""
    return unit.name.replace("/", "__")


def marker(out: Path, unit: Unit) -> Path:
    return out / ".done" / f"{file_name(unit)}.json"


def log_file(out: Path, unit: Unit) -> Path:
    return out / "logs" / f"{file_name(unit)}.log"


def is_done(out: Path, unit: Unit) -> bool:
    path = marker(out, unit)
    try:
        return json.loads(path.read_text()).get("argv") == list(unit.argv)
    except (OSError, json.JSONDecodeError):
        return False


def done_record(out: Path, unit: Unit) -> Optional[dict]:
    try:
        return json.loads(marker(out, unit).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def budget_settings(budget: Budget) -> dict:
    """What decides the results (the cost model only feeds the estimates)."""
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(budget).items() if k != "cost"}))


def check_study_dir(out: Path, budget: Budget) -> None:
    """OUT holds one budget's study: another budget, or this one with other settings (an edited
    study.py), in the same directory is refused."""
    path = out / "study.json"
    mine = budget_settings(budget)
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise StudyError(f"{path}: not valid JSON; remove it or use another --out") from None
        if theirs.get("name") != budget.name:
            raise StudyError(f"{out} holds a study with --budget {theirs.get('name')}; use --budget "
                             f"{theirs.get('name')} to resume it or another --out for --budget {budget.name}")
        changed = [f"{k}: {theirs.get(k)!r} -> {v!r}" for k, v in mine.items() if theirs.get(k) != v]
        if changed:
            raise StudyError(f"{out} holds a study of budget {budget.name} with other settings "
                             f"({'; '.join(changed)}); use another --out")
        return
    _write_json(path, mine)


def lock_study_dir(out: Path):
    """Hold OUT for this process (released when it exits, however it exits): a second runner on
    the same study would start the same units twice."""
    f = open(out / ".study.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise StudyError(f"{out} is being run by another process (pid {f.read().strip() or '?'}); "
                         "wait for it or stop it first") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def unit_progress(out: Path, unit: Unit) -> str:
    """How far a running unit is, from the files it writes."""
    try:
        if unit.kind == "train":
            last = 0
            with open(out / unit.out / "metrics.jsonl", encoding="utf-8") as f:
                for line in f:
                    if '"kind": "train"' in line:
                        last = json.loads(line)["step"]
            return f"step {last}/{unit.expect}"
        if unit.kind == "eval":
            with open(out / unit.out / "samples.jsonl", "rb") as f:
                lines = sum(1 for _ in f)
            return f"{lines}/{unit.expect} responses"
    except (OSError, ValueError, KeyError):
        pass
    return "starting"


def train_complete(out: Path, unit: Unit) -> Optional[str]:
    """None if a training unit ran every step, else why not (from its summary.json)."""
    path = out / unit.out / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return f"no readable {path}"
    if summary.get("steps") != unit.expect:
        return f"stopped at step {summary.get('steps')} of {unit.expect} (stopped_by: {summary.get('stopped_by')})"
    return None


@dataclass
class Running:
    unit: Unit
    proc: subprocess.Popen
    log: object
    start: float


class Runner:
    def __init__(self, out: Path, units: Sequence[Unit], jobs: int, progress_every: float = 60.0,
                 say=print):
        self.out, self.units, self.jobs, self.progress_every, self.say = out, list(units), jobs, progress_every, say
        self.running: dict[str, Running] = {}
        self.finished: dict[str, bool] = {u.name: is_done(out, u) for u in self.units}  # name -> succeeded
        self.failed: list[str] = []
        self.attempts: dict[str, int] = {}
        self.stopping = 0
        self.stopped_at = 0.0
        self.spent_cpu = self.spent_est = self.spent_wall = 0.0

    # --- estimates -----------------------------------------------------------------------
    def remaining(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) left, the estimates scaled by what finished units took."""
        scale = self.spent_cpu / self.spent_est if self.spent_est > 0 else 1.0
        left = sum(u.cost for u in self.units if not self.finished.get(u.name) and u.name not in self.failed)
        left = max(0.0, left - sum(min(time.monotonic() - r.start, r.unit.cost) for r in self.running.values()))
        wall_per_cpu = self.spent_wall / self.spent_cpu if self.spent_cpu > 0 else 1.0
        return left * scale, left * scale * max(wall_per_cpu, 1.0) / self.jobs

    def eta(self) -> str:
        cpu, wall = self.remaining()
        return f"about {hours(cpu)} of CPU left, {hours(wall)} at {self.jobs} job(s)"

    # --- processes -----------------------------------------------------------------------
    def start(self, unit: Unit) -> None:
        (self.out / unit.out).parent.mkdir(parents=True, exist_ok=True)
        log_path = log_file(self.out, unit)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")
        argv = resolve(unit.argv)
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        log.flush()
        env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
        parent = os.getpid()
        proc = subprocess.Popen(argv, cwd=self.out, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: _die_with_parent(parent))
        self.running[unit.name] = Running(unit, proc, log, time.monotonic())
        self.say(f"[{self.count()}] start {unit.name} (estimate {hours(unit.cost)} CPU)")

    def count(self) -> str:
        return f"{sum(self.finished.values())}/{len(self.units)}"

    def reap(self) -> None:
        for name, r in list(self.running.items()):
            pid, status, usage = os.wait4(r.proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            r.proc.returncode = os.waitstatus_to_exitcode(status)
            r.log.close()
            del self.running[name]
            wall, cpu = time.monotonic() - r.start, usage.ru_utime + usage.ru_stime
            self.finish(r.unit, r.proc.returncode, wall, cpu)

    def finish(self, unit: Unit, rc: int, wall: float, cpu: float) -> None:
        why = None if rc == 0 else f"exit code {rc}"
        if why is None and unit.kind == "train":
            why = train_complete(self.out, unit)
        if self.stopping:
            self.say(f"[{self.count()}] stopped {unit.name} after {hours(wall)} ({why or 'complete'})")
            if why is None:
                self._mark(unit, wall, cpu)
            return
        if why is not None:
            self.attempts[unit.name] = self.attempts.get(unit.name, 0) + 1
            again = self.attempts[unit.name] < ATTEMPTS
            if not again:
                self.failed.append(unit.name)
            log = log_file(self.out, unit)
            tail = log.read_text(errors="replace").splitlines()[-15:]
            self.say(f"[{self.count()}] FAILED {unit.name}: {why}{'; starting it once more' if again else ''}; "
                     f"its log, {log}, ends:\n    " + "\n    ".join(tail))
            return
        self._mark(unit, wall, cpu)
        self.spent_cpu += cpu
        self.spent_est += unit.cost
        self.spent_wall += wall
        self.say(f"[{self.count()}] done {unit.name} in {hours(wall)} ({hours(cpu)} CPU); {self.eta()}")

    def _mark(self, unit: Unit, wall: float, cpu: float) -> None:
        _write_json(marker(self.out, unit), {"argv": list(unit.argv), "wall_s": round(wall, 1),
                                             "cpu_s": round(cpu, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.finished[unit.name] = True

    def stop(self, signum, _frame) -> None:
        if not self.stopping:
            self.say(f"signal {signal.Signals(signum).name}: stopping {len(self.running)} running unit(s); "
                     "rerun the same command to resume")
            for r in self.running.values():
                try:
                    os.killpg(r.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.stopping = signum

    # --- the loop ------------------------------------------------------------------------
    def ready(self) -> list[Unit]:
        blocked = set(self.failed)
        for u in self.units:  # a unit that needs a failed one cannot run (in plan order)
            if any(d in blocked for d in u.deps):
                blocked.add(u.name)
        return [u for u in self.units if not self.finished[u.name] and u.name not in self.running
                and u.name not in blocked and all(self.finished.get(d) for d in u.deps)]

    def run(self) -> int:
        skipped = [u.name for u in self.units if self.finished[u.name]]
        if skipped:
            self.say(f"skipping {len(skipped)} finished unit(s): {', '.join(skipped)}")
        self.say(f"{len(self.units) - len(skipped)} unit(s) to run; {self.eta()}")
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        last_progress = time.monotonic()
        try:
            while True:
                if not self.stopping:
                    for unit in self.ready()[:max(0, self.jobs - len(self.running))]:
                        self.start(unit)
                if not self.running:
                    break
                time.sleep(0.5)
                self.reap()
                if self.stopping and self.running and time.monotonic() - self.stopped_at > 300:
                    for r in self.running.values():  # a unit that ignores SIGTERM for 5 minutes
                        os.killpg(r.proc.pid, signal.SIGKILL)
                if time.monotonic() - last_progress >= self.progress_every and self.running:
                    last_progress = time.monotonic()
                    self.say(f"[{self.count()}] " + "; ".join(
                        f"{n}: {unit_progress(self.out, r.unit)}" for n, r in self.running.items()) + f"; {self.eta()}")
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        if self.stopping:
            return 128 + self.stopping
        blocked = [u.name for u in self.units if not self.finished[u.name] and u.name not in self.failed]
        if self.failed:
            self.say(f"{len(self.failed)} unit(s) failed: {', '.join(self.failed)}"
                     + (f"; not run (they need those): {', '.join(blocked)}" if blocked else "")
                     + ". Fix the cause and rerun the same command: finished units are kept.")
            return 1
        return 0
