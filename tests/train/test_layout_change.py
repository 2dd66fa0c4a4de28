"""Resuming a run on another cluster shape: a TP2 x PP2 run's checkpoint continues at TP1 x PP1 x
DP2 and at TP2 x PP1 x DP2, a TP1 x PP1 x DP2 checkpoint back at TP2 x PP2 and at DP1 (a lost
node). Each resumed step repeats the uninterrupted TP2 x PP2 run's step: the same prompts and
samples (so rewards, lengths and dynamic-sampling counts are equal), and the update's loss and
metrics equal within fp32 reduction order (rel 1e-4 or abs 1e-6: other TP/PP/DP sizes sum the
same numbers in another order; measured at most 4.2e-7 absolute on any metric, 1.3e-4 relative
only on a loss of -2.4e-4, a difference of two near-equal terms). A layout the model
cannot take, or another optimizer than the one that wrote the state, is refused before any rank
starts, naming both layouts.

The uninterrupted run: 5 steps in two stages (the second longer), a learning-rate warm-up (the
schedule must carry over), a reference reset with optimizer reset at step 5 (after every resume
here: the reset schedule carries over), checkpoints at every step (step 3's holds Adam state).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.runs import comparable, prorl, records, run_ok, write_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STAGES = [{"name": "short", "steps": 2, "max_response_length": 10}, {"name": "long", "steps": 3}]
# What sampling and scoring produce: equal exactly when the samples are the same.
SAMPLED = ("reward/", "accuracy/", "response_length/", "dynamic_sampling/", "generated_tokens", "data/epochs/",
           "stage")
# Float32 reductions over other shards in another order.
RTOL, ATOL = 1e-4, 1e-6
ENGINE_ATOL = 1e-5  # |engine - trainer| log-prob statistics: each side rounds on its own


def shaped_config(tmp: Path, stages=STAGES) -> Path:
    return write_config(tmp, trainer__stages=stages, reset__every_n_steps=5, checkpoint__keep_last=5,
                        optim__lr_schedule="warmup_constant", optim__lr_warmup_steps=20)


def layout(tp: int, pp: int) -> list[str]:
    return [f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """5 steps at TP2 x PP2 (4 ranks), uninterrupted."""
    tmp = tmp_path_factory.mktemp("tp2pp2")
    run_ok("train", shaped_config(tmp), *layout(2, 2))
    return tmp / "run"


def resume(tmp: Path, source: Path, step: int, tp: int, pp: int, dp: int, until: int = 5) -> tuple[Path, str]:
    """Copy ``source``'s checkpoints up to ``step`` into a new run and continue it at TP x PP x DP
    to step ``until`` (a run configured for fewer steps ends there)."""
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / f"step_{step:08d}", run / "checkpoints" / f"step_{step:08d}")
    (run / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")
    stages = [STAGES[0], {**STAGES[1], "steps": until - STAGES[0]["steps"]}]
    out = run_ok("train", shaped_config(tmp, stages), *layout(tp, pp), "--nproc", tp * pp * dp)
    return run, out


def same_step(got: dict, want: dict) -> None:
    assert got["step"] == want["step"]
    for key, value in comparable(want).items():
        if key.startswith(SAMPLED):
            assert got[key] == value, key
        elif key.startswith("logprob_diff/"):
            assert got[key] == pytest.approx(value, abs=ENGINE_ATOL), key
        elif isinstance(value, (int, float)) and key not in ("step",):
            assert got[key] == pytest.approx(value, rel=RTOL, abs=ATOL, nan_ok=True), key


def sampler_at(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())["sampler"]


def layout_events(run: Path) -> list[tuple[int, str, str]]:
    return [(e["step"], e["layout_from"], e["layout_to"]) for e in records(run, "event") if e["category"] == "layout"]


def test_the_uninterrupted_run_refills_and_records_its_layout(uninterrupted):
    """The yardstick exercises what the resumed runs must repeat: refill rounds (so at DP2 kept
    groups move between replicas), both stages, the reset at step 5."""
    train = records(uninterrupted)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5] and [r["stage"] for r in train] == [0, 0, 1, 1, 1]
    assert any(r["dynamic_sampling/rounds"] > 1 for r in train[3:]), [r["dynamic_sampling/rounds"] for r in train]
    state = json.loads((uninterrupted / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["layout"] == {"tp": 2, "pp": 2, "dp": 1, "optimizer": "plain"} and state["layout_changes"] == []
    assert not (uninterrupted / "checkpoints" / "step_00000003" / "optimizer" / "FRESH").exists()


def test_tp2_pp2_to_tp1_dp2_and_back_to_tp2_pp2(uninterrupted, tmp_path):
    want = records(uninterrupted)
    # TP2 x PP2 x DP1 -> TP1 x PP1 x DP2 at step 3: step 4 as the uninterrupted run's.
    narrow, out = resume(tmp_path / "a", uninterrupted, 3, 1, 1, 2, until=4)
    assert "layout changed at step 3: TP2 x PP2 x DP1 -> TP1 x PP1 x DP2" in out
    same_step(records(narrow)[-1], want[3])
    assert sampler_at(narrow, 4) == sampler_at(uninterrupted, 4)
    assert layout_events(narrow) == [(3, "TP2 x PP2 x DP1", "TP1 x PP1 x DP2")]
    # ... and back: TP1 x PP1 x DP2 -> TP2 x PP2 x DP1 at step 4, through the reset at step 5.
    back, out = resume(tmp_path / "b", narrow, 4, 2, 2, 1)
    assert "layout changed at step 4: TP1 x PP1 x DP2 -> TP2 x PP2 x DP1" in out
    got = records(back)
    same_step(got[-1], want[4])
    assert sampler_at(back, 5) == sampler_at(uninterrupted, 5)
    summary = json.loads((back / "summary.json").read_text())
    assert summary["layout"] == "TP2 x PP2 x DP1"
    assert [(c["step"], c["from"], c["to"]) for c in summary["layout_changes"]] == [
        (3, "TP2 x PP2 x DP1", "TP1 x PP1 x DP2"), (4, "TP1 x PP1 x DP2", "TP2 x PP2 x DP1")]
    assert [(r["step"], r["optimizer_reset"]) for r in summary["resets"]] == [(5, True)]
    assert comparable(records(back, "val")[-1]) == comparable(records(uninterrupted, "val")[-1])


def test_tp2_pp2_to_tp2_pp1_dp2(uninterrupted, tmp_path):
    run, out = resume(tmp_path, uninterrupted, 3, 2, 1, 2, until=4)
    assert "layout changed at step 3: TP2 x PP2 x DP1 -> TP2 x PP1 x DP2" in out
    same_step(records(run)[-1], records(uninterrupted)[3])
    assert sampler_at(run, 4) == sampler_at(uninterrupted, 4)


def test_a_lost_node_dp2_to_dp1_continues_to_the_end(uninterrupted, tmp_path):
    """TP1 x PP1 x DP2 -> DP1: the same prompts next, the same step count, to the end."""
    dp2, _ = resume(tmp_path / "dp2", uninterrupted, 3, 1, 1, 2, until=4)
    dp1, out = resume(tmp_path / "dp1", dp2, 4, 1, 1, 1)
    assert "ProRL run finished: 5 steps" in out and "TP1 x PP1 x DP2 -> TP1 x PP1 x DP1" in out
    got = records(dp1)
    assert [r["step"] for r in got] == [5]
    same_step(got[-1], records(uninterrupted)[4])
    assert sampler_at(dp1, 5) == sampler_at(uninterrupted, 5)


@pytest.mark.parametrize("asked, reason", [
    (layout(3, 1), "parallel.tensor_model_parallel_size=3 does not divide num_attention_heads=4"),
    (layout(4, 1), "parallel.tensor_model_parallel_size=4 does not divide num_key_value_heads"),
    (layout(1, 4), "parallel.pipeline_model_parallel_size=4 does not divide num_hidden_layers=2"),
    (["parallel.use_distributed_optimizer=true"], "its optimizer state is the plain optimizer's"),
])
def test_a_layout_the_model_cannot_take_is_refused_before_any_rank_starts(uninterrupted, tmp_path, asked, reason):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # step 4's: its optimizer holds state (step 5 reset it)
    shutil.copytree(uninterrupted / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000004")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    proc = prorl("train", shaped_config(tmp_path), *asked, "--nproc", "4")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    line = out.strip().splitlines()[-1]
    assert line.startswith("prorl: error: resuming ") and "step_00000004 (written at TP2 x PP2 x DP1) at " in line
    assert reason in line, line
    assert "Traceback" not in out and not (run / "metrics.jsonl").exists()


def test_a_checkpoint_of_another_model_is_refused(uninterrupted, tmp_path):
    from helpers.hf_models import write_hf_dir

    src = json.loads((uninterrupted / "checkpoints" / "step_00000005" / "hf" / "config.json").read_text())
    other = tmp_path / "other"
    write_hf_dir(other, {**src, "vocab_size": src["vocab_size"] + 7})
    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "run" / "checkpoints")
    proc = subprocess.run([sys.executable, "-m", "megatron_prorl.cli", "train", str(shaped_config(tmp_path)),
                           f"model.hf_dir={other}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "the checkpoint holds another model (vocab_size=261 there, 268 in model.hf_dir)" in proc.stderr
