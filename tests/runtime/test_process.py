"""Signals and process lifetime, the way a cluster and a terminal deliver them: SIGTERM or SIGUSR1
to the whole process group (Slurm signals every process of a job step) in the middle of a step
and in the middle of a checkpoint write, Ctrl-C (SIGINT to the foreground process group) once
and twice, and kill -9 of the process that started the ranks. After each, no process of the
run is left, nothing in /dev/shm or /tmp, and the resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from helpers.runs import comparable, prorl, records, run_ok, wait_for, write_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SCRATCH = (Path("/dev/shm"), Path("/tmp"))


def scratch_entries() -> set[str]:
    """What multiprocessing and friends leave in the shared scratch places."""
    return {str(p) for d in SCRATCH for p in d.iterdir()
            if p.name.startswith(("sem.mp-", "pymp-", "prorl-sync-", "torch_"))}


def run_processes(proc) -> list[psutil.Process]:
    try:
        return [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(processes: list[psutil.Process], timeout: float = 20.0) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"still running: {[(p.pid, p.name()) for p in alive]}"


def sigint_caught(pid: int) -> bool:
    """Whether the process still has a handler for SIGINT (/proc's SigCgt mask): after the first
    Ctrl-C the kernel has put the default action back."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError(f"no SigCgt in /proc/{pid}/status")


@pytest.mark.parametrize("sig, moment", [(signal.SIGUSR1, "mid-step"), (signal.SIGTERM, "mid-save"),
                                         (signal.SIGINT, "mid-step")], ids=["SIGUSR1", "SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_ends_in_one_checkpoint(reference_run, tmp_path, sig, moment):
    """SIGINT is Ctrl-C at a terminal: handled as SIGTERM, but the exit code is 130, as a
    shell reports an interrupted command."""
    ref, _ = reference_run
    before = scratch_entries()
    config = write_config(tmp_path)
    run = tmp_path / "run"
    proc = prorl("train", config)
    if moment == "mid-step":  # step 1 logged, step 2 under way
        wait_for(lambda: (run / "metrics.jsonl").exists() and records(run), proc, what="step 1")
    else:
        wait_for(lambda: (run / "checkpoints" / ".step_00000001.incomplete").exists(), proc, what="step 1's write")
    processes = run_processes(proc)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == (130 if sig == signal.SIGINT else 0), out[-3000:]
    stopped = records(run)[-1]["step"]
    assert stopped < 3 and (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    assert f"ProRL run stopped by {signal.Signals(sig).name} at step {stopped} of 3" in out, out[-2000:]
    assert "before" not in out.split("ProRL run stopped")[1]  # no stale before -> after
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert not (run / ".prorl.lock").exists()  # a clean exit releases the directory
    assert_all_gone(processes)
    assert scratch_entries() <= before
    run_ok("train", config)
    assert [comparable(r) for r in records(run)] == [comparable(r) for r in records(ref)]


@pytest.mark.parametrize("tp", [1, 2], ids=["in-process", "launcher"])
def test_a_second_ctrl_c_stops_at_once(reference_run, tmp_path, tp):
    """Ctrl-C in the middle of step 1's checkpoint, then again as soon as the first is
    delivered: the command dies of SIGINT at once (TP2: its launcher, and the ranks with it),
    without a traceback; the next start removes the half-written checkpoint and repeats the
    uninterrupted run."""
    ref, _ = reference_run
    before = scratch_entries()
    config = write_config(tmp_path, parallel__tensor_model_parallel_size=tp)
    run = tmp_path / "run"
    proc = prorl("train", config)
    wait_for(lambda: (run / "checkpoints" / ".step_00000001.incomplete").exists(), proc, what="step 1's write")
    processes = run_processes(proc)
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: not sigint_caught(proc.pid), proc, timeout=30, what="the first SIGINT's delivery")
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT, out[-3000:]
    assert "Traceback" not in out and "ProRL run" not in out, out[-3000:]
    assert_all_gone(processes)
    assert scratch_entries() <= before
    out = run_ok("train", config)
    assert [r["step"] for r in records(run)] == [1, 2, 3]
    if tp == 1:
        assert [comparable(r) for r in records(run)] == [comparable(r) for r in records(ref)]


def test_killing_the_launcher_of_a_tp2_run_takes_its_ranks_with_it(tmp_path):
    before = scratch_entries()
    config = write_config(tmp_path, parallel__tensor_model_parallel_size=2)
    run = tmp_path / "run"
    proc = prorl("train", config)
    wait_for(lambda: (run / "checkpoints" / "latest").exists(), proc, what="step 1's checkpoint")
    processes = run_processes(proc)
    ranks = [p for p in processes if p.pid != proc.pid]
    assert len(ranks) >= 2  # the two ranks, their reward workers...
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, as the OOM killer would
    proc.wait()
    assert_all_gone(ranks)
    assert scratch_entries() <= before
    out = run_ok("train", config)
    assert "resumed from" in out
    assert [r["step"] for r in records(run)] == [1, 2, 3]
