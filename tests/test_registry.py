"""The one Registry type behind every name -> thing table, and what registering an entry means
for the rest of the system: a toy engine and a toy domain registered from here are accepted by
config validation, built (by the trainer's builder and by `prorl eval`), loaded from data files
and scored in RewardPool workers."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.toy_domain import verify_toy
from megatron_prorl.config import ConfigError, RewardsConfig, RolloutConfig
from megatron_prorl.train.validate import load_run_config
from megatron_prorl.registry import Registry, UnknownNameError
from megatron_prorl.rollout import ENGINES, RolloutEngine, Sample, SyncStats, build_engine_from_config
from megatron_prorl.domains import DOMAINS
from megatron_prorl.rewards import RewardPool, register_verifier


def test_add_get_and_errors():
    reg = Registry("widget")

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a and "a" in reg and reg.names() == ("a",) and list(reg) == ["a"]
    with pytest.raises(ValueError, match="widget 'a' is already registered .*replace=True"):
        reg.register("a", lambda: 2)
    with pytest.raises(ValueError, match="non-empty"):
        reg.register("")
    with pytest.raises(UnknownNameError) as err:
        reg.get("b")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert str(err.value) == "unknown widget 'b'; known: a"


def test_replacement_only_when_asked():
    reg = Registry("widget", {"a": 1})
    reg.register("a", 2, replace=True)
    assert reg.get("a") == 2


def test_lazy_entries_import_on_first_use_and_added_lists_runtime_entries():
    reg = Registry("widget", {"join": "os.path:join"})
    assert reg.get("join") is __import__("os").path.join
    assert reg.added() == {}
    reg.register("later", len)
    assert reg.added() == {"later": len}


class ToyEngine(RolloutEngine):
    """Echoes each prompt's last token n times."""

    def __init__(self, rollout_cfg=None):
        self.rollout_cfg = rollout_cfg

    @classmethod
    def from_rollout_config(cls, cfg, **context):
        return cls(cfg)

    def generate(self, prompt_ids, params):
        return [Sample(i, j, [p[-1]], torch.zeros(1), "eos") for i, p in enumerate(prompt_ids) for j in range(params.n)]

    def update_weights(self, buckets):
        return SyncStats()

    def sleep(self):
        pass

    def wake(self):
        pass

    def shutdown(self):
        pass


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registrations made by a test vanish with it."""
    for reg in (ENGINES, DOMAINS):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))


def test_a_registered_engine_is_a_valid_config_value_and_is_built(scratch_registries):
    with pytest.raises(ConfigError, match="rollout.engine='toy'"):
        load_run_config(overrides=["rollout.engine=toy"])
    ENGINES.register("toy", ToyEngine)
    cfg = load_run_config(overrides=["rollout.engine=toy"])
    engine = build_engine_from_config(cfg.rollout, hf_config={}, hf_dir=None, eos_token_ids=[0], pad_token_id=0,
                                      device="cpu", dtype=torch.float32)
    assert isinstance(engine, ToyEngine) and engine.rollout_cfg is cfg.rollout


def test_a_registered_domain_is_valid_in_configs_and_rows_and_scored_in_workers(scratch_registries, tmp_path):
    from megatron_prorl.config import DataSourceConfig
    from megatron_prorl.data import load_source

    rows = tmp_path / "toy.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Reverse {w}", "domain": "toy", "ground_truth": w}) + "\n"
                            for w in ("abc", "xyz")))
    with pytest.raises(ConfigError, match="data.train\\[0\\].domain='toy'"):
        load_run_config(overrides=[f"data.train=[{{path: '{rows}', domain: toy}}]"])
    with pytest.raises(ValueError, match="no usable rows"), pytest.warns(UserWarning, match="unknown domain 'toy'"):
        load_source(DataSourceConfig(path=str(rows)))

    register_verifier("toy", verify_toy)
    load_run_config(overrides=[f"data.train=[{{path: '{rows}', domain: toy}}]"])
    source = load_source(DataSourceConfig(path=str(rows)))
    assert [r.ground_truth for r in source.rows] == ["abc", "xyz"]
    with RewardPool(RewardsConfig(), num_workers=1, preload=()) as pool:  # workers learn of "toy" by themselves
        results = pool.map([("toy", "cba", "abc"), ("toy", "abc", "abc")])
    assert [r.reward for r in results] == [1.0, 0.0]


def test_a_registered_engine_is_usable_in_prorl_eval(scratch_registries, tmp_path, capsys):
    from megatron_prorl.eval.cli import main as eval_main
    from megatron_prorl.eval.run import read_samples

    calls = []

    class RecordingToyEngine(ToyEngine):
        def generate(self, prompt_ids, params):
            calls.append((len(prompt_ids), params))
            return super().generate(prompt_ids, params)

    argv = ["--model", "builtin:tiny", "--data", "builtin:tiny/heldout.jsonl", "--out", str(tmp_path / "eval"),
            "--engine", "toy", "--samples", "2", "--k", "1,2", "--max-new-tokens", "8", "--limit", "3",
            "--reward-workers", "1", "--quiet"]
    assert eval_main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "prorl eval: error: --engine='toy': expected one of auto, tensorrt_llm, transformers")
    ENGINES.register("toy", RecordingToyEngine)
    assert eval_main(argv) == 0
    assert sum(n for n, _ in calls) == 3  # eval's settings reached the engine
    assert {(p.n, p.temperature, p.top_p, p.max_new_tokens) for _, p in calls} == {(2, 0.6, 0.95, 8)}
    records = read_samples(tmp_path / "eval" / "samples.jsonl", text=True)
    # the echoed last prompt token is the EOS: an empty response, scored by the math verifier
    assert [(r["problem"], r["sample"]) for r in records] == [(p, s) for p in range(3) for s in range(2)]
    assert all(r["finish_reason"] == "eos" and r["length"] == 1 and r["response"] == "" and r["score"] == 0.0
               for r in records), records


def test_auto_engine_is_resolved_in_one_place(scratch_registries, monkeypatch):
    from megatron_prorl.rollout import base

    assert base.engine_choices() == ("auto", "tensorrt_llm", "transformers")
    assert base.resolve_engine("transformers") == "transformers"
    monkeypatch.setattr(base, "missing_for_tensorrt_llm", lambda: "a CUDA GPU")
    assert base.resolve_engine("auto") == "transformers"
    monkeypatch.setattr(base, "missing_for_tensorrt_llm", lambda: "")
    assert base.resolve_engine("auto") == "tensorrt_llm"
    ENGINES.register("tensorrt_llm", ToyEngine, replace=True)  # what "auto" builds follows the same rule
    engine = build_engine_from_config(RolloutConfig(engine="auto"), hf_config={}, hf_dir=None, eos_token_ids=[0],
                                      pad_token_id=0, device="cpu", dtype=torch.float32)
    assert isinstance(engine, ToyEngine)
    ENGINES.register("toy", ToyEngine)
    assert base.engine_choices() == ("auto", "tensorrt_llm", "toy", "transformers")


def test_a_domain_is_not_replaced_by_accident(scratch_registries):
    with pytest.raises(ValueError, match="task domain 'math' is already registered"):
        register_verifier("math", verify_toy)
    register_verifier("math", verify_toy, replace=True)
    assert DOMAINS.get("math").verify is verify_toy
