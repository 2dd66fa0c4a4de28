"""Checkpoints under the faults a cluster produces: kill -9 while a checkpoint is written or old
ones are pruned, damaged files in the latest checkpoint, a full disk; and resuming from every
kind of step (the first, a reset step, the last). After each, the resumed run repeats what an
uninterrupted run did (tests/conftest.py reference_run: 3 steps, a reset at step 2) and nothing
half-written is left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers.runs import comparable, prorl, prorl_fails, records, run_ok, wait_for, write_config

from checkpoint_convert.manifest import write_manifest
from megatron_prorl.train.checkpoint import CheckpointManager, NoValidCheckpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def hidden_leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


def same_as_reference(run: Path, ref: Path) -> None:
    assert [comparable(r) for r in records(run)] == [comparable(r) for r in records(ref)]
    assert [comparable(r) for r in records(run, "val")] == [comparable(r) for r in records(ref, "val")]


def test_kill_during_a_checkpoint_write_resumes_from_the_first_step_exactly(reference_run, tmp_path):
    """SIGKILL to the whole run while step 2's checkpoint is being written: step 1's stays the
    latest, the half-written one is removed at the next start, and the resumed run (from the
    first step's checkpoint, through a reset step) repeats the uninterrupted one, RNG included."""
    ref, _ = reference_run
    config = write_config(tmp_path)
    run = tmp_path / "run"
    proc = prorl("train", config)
    wait_for(lambda: (run / "checkpoints" / ".step_00000002.incomplete").exists(), proc, what="step 2's write")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    out = run_ok("train", config)
    assert "resumed from" in out and "left by an interrupted run" in out
    same_as_reference(run, ref)
    assert hidden_leftovers(run) == []
    # Python, NumPy, torch and the Megatron RNG tracker are where the uninterrupted run had them.
    got, want = (torch.load(r / "checkpoints" / "step_00000003" / "rng" / "rank_0.pt", weights_only=False)
                 for r in (run, ref))
    assert got.keys() == want.keys() and "megatron_tracker" in got
    assert got["python"] == want["python"] and torch.equal(got["torch"], want["torch"])
    assert all(torch.equal(got["megatron_tracker"][k], want["megatron_tracker"][k]) for k in want["megatron_tracker"])


@pytest.mark.parametrize("damage", ["flipped"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(reference_run, tmp_path, damage):
    """A flipped byte in a tensor file of the latest checkpoint: the run names the file, resumes
    from the one before (step 2, taken at a reset step) and repeats the uninterrupted steps."""
    ref, _ = reference_run
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    victim = sorted((run / "checkpoints" / "step_00000003" / "model").glob("*.distcp"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    config = write_config(tmp_path)
    out = run_ok("train", config)
    assert f"checkpoint step_00000003 is not usable: {victim}: contents changed" in out, out[-3000:]
    assert "resuming from step_00000002 instead" in out
    same_as_reference(run, ref)


def test_continuing_a_finished_run_resumes_from_its_last_step(reference_run, tmp_path):
    """A finished run releases its directory; rerun as it is, there is nothing to do (one line,
    no rank started); with a step more and another learning rate it goes on from its last step,
    and the changed keys are listed and recorded as an event."""
    ref, _ = reference_run
    assert not (ref / ".prorl.lock").exists()
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = (run / "metrics.jsonl").read_text()
    out = run_ok("train", write_config(tmp_path))
    assert out.strip() == (f"nothing to do: the run finished all 3 steps ({run / 'checkpoints' / 'step_00000003'}); "
                           "add steps to the last stage (trainer.stages.0.steps=...) or a stage to continue it, or "
                           "set another trainer.output_dir for a new run"), out[-3000:]
    assert (run / "metrics.jsonl").read_text() == before and not (run / ".prorl.lock").exists()
    out = run_ok("train", write_config(tmp_path, trainer__stages=[{"name": "main", "steps": 4}]), "optim.lr=1e-3")
    assert "resumed from" in out and "at step 3" in out
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]
    assert ("[step 3] config changed on resume: optim.lr 0.0003 -> 0.001; trainer.stages[0].steps 3 -> 4 "
            "(stage 0 now ends at step 4)") in out, out[-3000:]
    [event] = [e for e in records(run, "event") if e["category"] == "config"]
    assert event["step"] == 3 and event["changes"] == [
        {"key": "optim.lr", "old": 0.0003, "new": 0.001, "note": ""},
        {"key": "trainer.stages[0].steps", "old": 3, "new": 4, "note": "stage 0 now ends at step 4"}]
    assert "lr: 0.001" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("override, refused", [
    ("trainer.seed=2", "trainer.seed 1 -> 2 (every step's sampling seed and the resumed random states derive from it)"),
    ("data.train.0.size=100", "data.train[0].size 2000 -> 100 (the sampler continues its position in the training "
                              "sources)"),
    ("data.val=[]", "data.val[#] 1 -> 0"),
    ("model.dtype=bf16", "model.dtype \"fp32\" -> \"bf16\" (the weights and optimizer state were saved in this "
                         "precision)"),
    ("trainer.stages=[{name: main, steps: 2}]", "trainer.stages[0].steps 3 -> 2 (the stage would end before step 3, "
                                                "where the run is)"),
])
def test_changes_a_resumed_run_cannot_take_are_refused_before_any_rank_starts(reference_run, tmp_path, override,
                                                                              refused):
    ref, _ = reference_run
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    proc = subprocess.run([sys.executable, "-m", "megatron_prorl.cli", "train", str(write_config(tmp_path)), override],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"prorl: error: cannot resume {run / 'checkpoints' / 'step_00000003'} (step 3) "
                                  "with this config: "), proc.stderr
    assert refused in proc.stderr and "Undo the change (the checkpoint's config: " in proc.stderr, proc.stderr
    assert not (run / ".prorl.lock").exists()


def test_a_latest_pointer_that_lags_a_complete_checkpoint_is_passed_over(reference_run, tmp_path):
    """A kill between publishing step 3's checkpoint and updating ``latest`` leaves the pointer on
    step 2: the run resumes from step 3, the newest complete and verified one, and says so."""
    ref, _ = reference_run
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    out = run_ok("train", write_config(tmp_path))
    assert "latest names step_00000002, but step_00000003 is newer and complete" in out, out[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_00000003'} at step 3" in out, out[-3000:]
    same_as_reference(run, ref)


def test_a_data_file_reordered_before_resume_is_named(tmp_path):
    """The same rows in another order: the sampler would draw other prompts than the run it
    continues. Refused (exact resume is the promise), one line naming the file."""
    from megatron_prorl.data import save_rows
    from megatron_prorl.data.generators import generate

    rows = tmp_path / "train.jsonl"
    save_rows(generate("arithmetic:add", 200, seed=3), rows)

    def steps(n: int) -> Path:
        return write_config(tmp_path, data__train=[{"path": str(rows)}], data__val=[],
                            trainer__stages=[{"name": "main", "steps": n}])

    run_ok("train", steps(1))
    lines = rows.read_text().splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    rows.write_text("".join(lines))
    line = prorl_fails("train", steps(2))
    assert f"data changed since the checkpoint: {rows}: the same 200 rows, in another order or with other content" \
        in line, line
    assert [r["step"] for r in records(tmp_path / "run")] == [1]


def _a_rank_of(proc: subprocess.Popen) -> psutil.Process:
    """One of the TP ranks `prorl train` started (its spawned children, not the resource tracker)."""
    ranks = [c for c in psutil.Process(proc.pid).children() if "--multiprocessing-fork" in c.cmdline()]
    assert len(ranks) == 2, [c.cmdline() for c in psutil.Process(proc.pid).children()]
    return max(ranks, key=lambda c: c.pid)


def test_a_stopped_rank_or_a_killed_one_ends_the_run_in_one_line_and_it_resumes(tmp_path):
    """TP2. A rank stopped (SIGSTOP: a hung node) after step 1's checkpoint: the run ends within
    parallel.heartbeat_timeout_s, one line naming the rank and the checkpoint to resume from,
    nothing left running. The rerun resumes; a rank of it killed (SIGKILL) after step 2 is one
    line too; the third run finishes."""
    config = write_config(tmp_path, parallel__tensor_model_parallel_size=2, parallel__heartbeat_timeout_s=15,
                          data__val=[])
    run = tmp_path / "run"
    latest = run / "checkpoints" / "latest"

    def fails_when(step: int, sig: int) -> tuple[str, float]:
        proc = prorl("train", config)
        wait_for(lambda: latest.exists() and latest.read_text().strip() == f"step_{step:08d}", proc,
                 what=f"step {step}'s checkpoint")
        victim = _a_rank_of(proc)
        processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        started = time.monotonic()
        os.kill(victim.pid, sig)
        out, _ = proc.communicate(timeout=300)
        elapsed = time.monotonic() - started
        assert proc.returncode == 1, out[-3000:]
        (line,) = [x for x in out.splitlines() if x.startswith("prorl: error:")]
        assert f"(pid {victim.pid})" in line and f"the latest checkpoint is step_{step:08d}" in line, line
        assert "Traceback" not in out, out[-3000:]
        _, alive = psutil.wait_procs(processes, timeout=20)
        assert not alive, f"still running: {[(p.pid, p.name()) for p in alive]}"
        assert CheckpointManager(run / "checkpoints", 2).latest() == run / "checkpoints" / f"step_{step:08d}"
        return line, elapsed

    line, elapsed = fails_when(1, signal.SIGSTOP)
    assert "has shown no sign of life for 15 s" in line, line
    assert elapsed < 15 + 45, elapsed
    line, _ = fails_when(2, signal.SIGKILL)
    assert "was killed by SIGKILL" in line, line
    out = run_ok("train", config)
    assert "resumed from" in out and "at step 2" in out
    assert [r["step"] for r in records(run)] == [1, 2, 3]


def _fake_checkpoint(root: Path, step: int) -> Path:
    """A checkpoint directory with the parts a trainer checkpoint has (contents arbitrary):
    CheckpointManager decides on files, not tensors."""
    path = root / f"step_{step:08d}"
    for part in ("model/.metadata", "model/__0_0.distcp", "reference/.metadata", "optimizer/FRESH",
                 "trainer_state.json", "meta.json"):
        (path / part).parent.mkdir(parents=True, exist_ok=True)
        (path / part).write_bytes(os.urandom(64))
    write_manifest(path)
    return path


@pytest.mark.parametrize("damage, reason", [("truncated", "truncated or overwritten"), ("deleted", "missing"),
                                            ("flipped", "checksum mismatch")])
def test_damage_is_reported_with_the_file_and_the_newest_intact_checkpoint_taken(tmp_path, caplog, damage, reason):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake_checkpoint(root, step)
    (root / "latest").write_text("step_00000003\n")
    victim = root / "step_00000003" / "model" / "__0_0.distcp"
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:10])
    elif damage == "deleted":
        victim.unlink()
    else:
        victim.write_bytes(b"\x00" + victim.read_bytes()[1:])
    assert CheckpointManager(root, 2).latest() == root / "step_00000002"
    assert f"checkpoint step_00000003 is not usable: {victim}" in caplog.text and reason in caplog.text
    # Every checkpoint damaged: an error, never a silent start from scratch.
    for step in (1, 2):
        (root / f"step_{step:08d}" / "trainer_state.json").write_text("{}")
    with pytest.raises(NoValidCheckpoint, match="no intact checkpoint to resume from"):
        CheckpointManager(root, 2).latest()


def test_the_newest_complete_checkpoint_wins_over_a_lagging_pointer(tmp_path, caplog):
    """Resuming (CheckpointManager) and every command that takes a run directory
    (resolve_checkpoint: prorl-convert, prorl eval) take the newest complete checkpoint."""
    from checkpoint_convert.checkpoint import resolve_checkpoint

    root = tmp_path / "run" / "checkpoints"
    for step in (1, 2, 3):
        _fake_checkpoint(root, step)
    (root / "latest").write_text("step_00000002\n")
    assert CheckpointManager(root, 2).latest() == root / "step_00000003"
    assert "latest names step_00000002, but step_00000003 is newer and complete" in caplog.text
    for given in (root.parent, root, root / "latest"):
        ckpt, how = resolve_checkpoint(given)
        assert ckpt == root / "step_00000003" and "newer than step_00000002" in how, how
    # a damaged newer one: resuming falls back to the newest intact one, as for any damage
    (root / "step_00000003" / "trainer_state.json").write_text("{}")
    assert CheckpointManager(root, 2).latest() == root / "step_00000002"


def test_a_checkpoint_without_manifest_must_at_least_be_complete(tmp_path, caplog):
    """Checkpoints written before manifests existed load unverified (with a warning), unless a
    part is missing: what a kill during pruning used to leave."""
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        (_fake_checkpoint(root, step) / "manifest.json").unlink()
    shutil.rmtree(root / "step_00000002" / "model")
    assert CheckpointManager(root, 2).latest() == root / "step_00000001"
    assert "step_00000002 is not usable: incomplete" in caplog.text and "not verified" in caplog.text


_PRUNE_AND_DIE = """
import os, shutil, signal, sys
from pathlib import Path
sys.path[:0] = {paths!r}
from megatron_prorl.train.checkpoint import CheckpointManager
real = shutil.rmtree
def dying_rmtree(path, *a, **k):  # delete part of the old checkpoint, then die like kill -9
    if ".trash-" not in str(path):
        return real(path, *a, **k)
    victims = sorted(p for p in Path(path).rglob("*") if p.is_file())
    for p in victims[: len(victims) // 2]:
        p.unlink()
    os.kill(os.getpid(), signal.SIGKILL)
shutil.rmtree = dying_rmtree
def write(tmp):
    (tmp / "trainer_state.json").write_text("{{}}")
    for part in ("meta.json", "model/.metadata", "reference/.metadata"):
        (tmp / part).parent.mkdir(exist_ok=True)
        (tmp / part).write_text("x")
CheckpointManager(Path({root!r}), keep_last=1).save(3, write)
"""


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path):
    """A real process is killed in the middle of deleting the oldest checkpoint: what it leaves
    is never taken for a checkpoint, and the next start removes it."""
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        _fake_checkpoint(root, step)
    code = _PRUNE_AND_DIE.format(paths=sys.path, root=str(root))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (root / "latest").read_text().strip() == "step_00000003"
    assert sorted(p.name for p in root.iterdir()) == [".trash-step_00000001", "latest", "step_00000002",
                                                       "step_00000003"]
    manager = CheckpointManager(root, keep_last=1)
    manager.remove_leftovers()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000003"]
    assert manager.latest() == root / "step_00000003"


@pytest.fixture
def small_disk(tmpfs):
    """A 4 MiB tmpfs: room for one tiny checkpoint, not two."""
    return tmpfs("4m")


def test_a_full_disk_names_the_directory_and_keeps_the_previous_checkpoint(small_disk, tmp_path):
    run = small_disk / "run"
    config = write_config(tmp_path, trainer__output_dir=str(run), data__val=[])
    proc = prorl("train", config)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, out[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("prorl: error:")]
    latest = (run / "checkpoints" / "latest").read_text().strip()
    failed = int(latest.removeprefix("step_")) + 1
    assert f"checkpoint of step {failed}: {run / 'checkpoints'}: no space left on device" in line, line
    assert f"the latest checkpoint is still {latest}" in line, line
    assert "Traceback" not in out and "Exception in thread" not in out, out[-3000:]
    # Nothing half-written stays; what is there is intact.
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert CheckpointManager(run / "checkpoints", 2).latest() == run / "checkpoints" / latest


# Loaded by every Python process of the run (PYTHONPATH): rank 0 alone finds the disk full when
# Megatron writes step 2's common.pt, the one file of a save that rank 0 writes outside the
# collective torch_dist write, while the other ranks go on into it.
FULL_ON_RANK_0 = """
import errno, os
import torch

_save = torch.save

def save(obj, f, *args, **kwargs):
    import torch.distributed as dist
    name = str(f) if isinstance(f, (str, os.PathLike)) else ""
    if (name.endswith(os.path.join("model", "common.pt")) and ".step_00000002." in name
            and dist.is_initialized() and dist.get_rank() == 0):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
    return _save(obj, f, *args, **kwargs)

torch.save = save
"""


def test_a_full_disk_on_the_first_rank_alone_ends_every_rank_with_one_line(tmp_path):
    """TP2: rank 0 fails where the others cannot see it (they wait in the collective write).
    The run still ends at once with one line, no rank is left waiting, and it resumes."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_ON_RANK_0)
    config = write_config(tmp_path, parallel__tensor_model_parallel_size=2, data__val=[])
    run = tmp_path / "run"
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    proc = prorl("train", config, env={"PYTHONPATH": pythonpath})
    wait_for(lambda: (run / "checkpoints" / ".step_00000002.incomplete").exists(), proc, what="step 2's write")
    processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("prorl: error:")]
    assert f"checkpoint of step 2: {run / 'checkpoints'}: no space left on device" in line, line
    assert "the latest checkpoint is still step_00000001" in line, line
    assert "Traceback" not in out, out[-3000:]
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive, f"still running: {[(p.pid, p.name()) for p in alive]}"
    assert hidden_leftovers(run) == []
    assert CheckpointManager(run / "checkpoints", 2).latest() == run / "checkpoints" / "step_00000001"
    out = run_ok("train", config)
    assert "resumed from" in out
    assert [r["step"] for r in records(run)] == [1, 2, 3]

