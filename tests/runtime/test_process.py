"""Signals and process lifetime, the way a cluster delivers them: SIGTERM or SIGUSR1 to the whole
process group (Slurm signals every process of a job step) in the middle of a step and in the
middle of a checkpoint write, and kill -9 of the process that started the ranks. After each,
no process of the run is left, nothing in /dev/shm or /tmp, and the resumed run repeats the
uninterrupted one.
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


@pytest.mark.parametrize("sig, moment", [(signal.SIGUSR1, "mid-step"), (signal.SIGTERM, "mid-save")])
def test_a_signal_to_the_process_group_ends_in_one_checkpoint(reference_run, tmp_path, sig, moment):
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
    assert proc.returncode == 0, out[-3000:]
    stopped = records(run)[-1]["step"]
    assert stopped < 3 and (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    assert f"ProRL run stopped by {signal.Signals(sig).name} at step {stopped} of 3" in out, out[-2000:]
    assert "before" not in out.split("ProRL run stopped")[1]  # no stale before -> after
    assert_all_gone(processes)
    assert scratch_entries() <= before
    run_ok("train", config)
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
