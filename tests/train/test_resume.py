"""What a resumed run may change (megatron_prorl/train/resume.py): the checkpoint's config.yaml
against the config of this start, key by key, by the rules of its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.hf_models import QWEN2

from megatron_prorl.config import ConfigError, load_config, to_yaml
from megatron_prorl.train import resume

# A run of three stages of 10 steps (a, b, c) on one generated source.
BASE = ["trainer.stages=[{name: a, steps: 10}, {name: b, steps: 10, n: 8}, {name: c, steps: 10}]",
        "data.train=[{path: arithmetic:add}]"]


def point(tmp_path: Path, step: int, *overrides: str) -> resume.ResumePoint:
    """The run's checkpoint at ``step`` (its config: BASE and ``overrides``)."""
    path = tmp_path / f"step_{step:08d}"
    (path / "hf").mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(to_yaml(load_config(None, [*BASE, *overrides])))
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    return resume.resume_point(path)


def changes(p: resume.ResumePoint, *overrides: str, hf_config=None) -> dict[str, resume.Change]:
    """The changes, by key, of a start with BASE and ``overrides``."""
    return {c.key: c for c in resume.config_changes(p, load_config(None, [*BASE, *overrides]), hf_config)}


def test_no_change_no_entry(tmp_path):
    assert changes(point(tmp_path, 12)) == {}


def test_knobs_change_freely_and_a_few_are_refused(tmp_path):
    got = changes(point(tmp_path, 12), "optim.lr=1e-5", "rollout.top_p=0.9", "trainer.seed=7", "data.seed=3",
                  "data.train.0.weight=2.0", "checkpoint.load=/x", "model.init_seed=3")
    assert {k: bool(c.refused) for k, c in got.items()} == {
        "optim.lr": False, "rollout.top_p": False, "trainer.seed": True, "data.seed": True,
        "data.train[0].weight": False, "checkpoint.load": False, "model.init_seed": False}
    assert got["optim.lr"].line() == "optim.lr 2e-06 -> 1e-05"
    assert "ignored" in got["checkpoint.load"].note and "no effect" in got["model.init_seed"].note


def test_a_moved_run_is_not_a_change(tmp_path):
    assert changes(point(tmp_path, 12, "trainer.output_dir=/old"), "trainer.output_dir=/new") == {}


def test_data_sources_cannot_change_but_their_weights_can(tmp_path):
    p = point(tmp_path, 12)
    got = changes(p, "data.train=[{path: arithmetic:add, weight: 3.0}, {path: 'reasoning_gym:chain_sum'}]")
    assert got["data.train[0].weight"].refused == ""
    assert got["data.train[#]"].refused and (got["data.train[#]"].old, got["data.train[#]"].new) == (1, 2)
    with pytest.raises(ConfigError, match=r"cannot resume .* \(step 12\) with this config: data.train\[#\] 1 -> 2 "):
        resume.check_changes(p, list(got.values()))


@pytest.mark.parametrize("step, override, verdict", [
    (12, "trainer.stages.0.n=4", "refused"),  # stage a ran steps 1-10
    (12, "trainer.stages.1.n=4", "from step 13"),  # the current stage, from the next step
    (12, "trainer.stages.2.n=4", "a stage not begun yet"),
    (12, "trainer.stages.1.steps=20", "stage 1 now ends at step 30"),
    (12, "trainer.stages.1.steps=1", "refused"),  # would end at 11, before step 12
    (12, "trainer.stages.1.reset_reference_at_start=true", "no effect: the stage has begun"),
    (10, "trainer.stages.0.steps=12", "stage 0 now ends at step 12"),  # at a boundary: a's last step
    (30, "trainer.stages.2.steps=15", "stage 2 now ends at step 35"),  # a finished run goes on
])
def test_stages_before_the_checkpoint_are_fixed(tmp_path, step, override, verdict):
    [change] = changes(point(tmp_path, step), override).values()
    assert (bool(change.refused) if verdict == "refused" else change.note == verdict), change


@pytest.mark.parametrize("stages, verdict", [
    ("[{name: a, steps: 10}, {name: b, steps: 10, n: 8}, {name: c, steps: 10}, {name: d, steps: 5}]",
     "stages added after the last one"),
    ("[{name: a, steps: 10}, {name: b, steps: 10, n: 8}]", "stages not begun yet removed"),
    ("[{name: a, steps: 10}]", "refused"),
])
def test_stages_added_or_removed(tmp_path, stages, verdict):
    got = changes(point(tmp_path, 12), f"trainer.stages={stages}")
    change = got["trainer.stages[#]"]
    assert (bool(change.refused) if verdict == "refused" else change.note == verdict), change


def test_the_model_may_move_but_not_change(tmp_path):
    p = point(tmp_path, 12, "model.hf_dir=/old/place")
    (p.path / "hf" / "config.json").write_text(json.dumps(QWEN2))
    moved = changes(p, "model.hf_dir=/new/place", hf_config=QWEN2)["model.hf_dir"]
    assert not moved.refused and "same architecture" in moved.note
    other = changes(p, "model.hf_dir=/new/place", hf_config=dict(QWEN2, num_hidden_layers=4))["model.hf_dir"]
    assert other.refused


def test_nothing_to_do_only_when_every_step_is_done(tmp_path):
    assert resume.nothing_to_do(None, 30) is None
    assert resume.nothing_to_do(point(tmp_path, 29), 30) is None
    line = resume.nothing_to_do(point(tmp_path, 30), 30)
    assert line.startswith("nothing to do: the run finished all 30 steps") and "trainer.stages.2.steps=" in line
