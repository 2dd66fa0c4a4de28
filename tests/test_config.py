"""Configuration: YAML + overrides, and the errors a user gets for bad values."""

import json
from pathlib import Path

import pytest

from megatron_prorl.runtime import accelerator
from megatron_prorl.config import ConfigError
from megatron_prorl.train.validate import load_run_config, validate

ROOT = Path(__file__).resolve().parents[1]
R1_1P5B = json.loads((ROOT / "configs/models/deepseek-r1-distill-qwen-1.5b.json").read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_run_config(ROOT / "configs" / name)
    assert cfg.batch.prompts_per_step % cfg.batch.prompts_per_mini_batch == 0


def test_paper_config_matches_the_recipe():
    cfg = load_run_config(ROOT / "configs/prorl_1p5b_4node.yaml")
    validate(cfg, R1_1P5B, world_size=32)
    assert (cfg.batch.prompts_per_step, cfg.rollout.n, cfg.batch.prompts_per_mini_batch) == (256, 16, 64)
    assert (cfg.algo.eps_low, cfg.algo.eps_high, cfg.rollout.temperature, cfg.optim.lr) == (0.2, 0.4, 1.2, 2e-6)
    assert (cfg.algo.clip_ratio_c, cfg.algo.kl_estimator, cfg.algo.kl_clamp) == (3.0, "k3", 10.0)  # verl's
    assert [s.max_response_length for s in cfg.trainer.stages] == [8192, 16384]
    from megatron_prorl.train.stages import resolve_stages

    resolve_stages(cfg)  # its token budgets hold the 16k stage's 2,048 + 16,384 tokens
    assert cfg.batch.pack_sequences and cfg.model.logprob_chunk_tokens


def test_verl_defaults_and_switching_them_off():
    assert (load_run_config().algo.clip_ratio_c, load_run_config().algo.kl_clamp) == (3.0, 10.0)
    cfg = load_run_config(overrides=["algo.clip_ratio_c=null", "algo.kl_clamp=null"])
    assert cfg.algo.clip_ratio_c is None and cfg.algo.kl_clamp is None


def test_overrides_are_typed():
    cfg = load_run_config(overrides=["rollout.n=4", "optim.lr=1e-5", "model.fp8=null"])
    assert cfg.rollout.n == 4 and cfg.optim.lr == 1e-5 and cfg.model.fp8 is None


@pytest.mark.parametrize("override, expected", [
    ("parallel.tensor_parallel=2", "parallel.tensor_parallel"),
    ("rollout.n=many", "rollout.n"),
    ("rollout.temperature=0", "rollout.temperature=0"),
    ("algo.loss_agg=mean", "algo.loss_agg='mean'"),
    ("algo.kl_estimator=k9", "algo.kl_estimator='k9'"),
    ("algo.clip_ratio_c=1.0", "algo.clip_ratio_c=1.0: must be > 1"),  # verl asserts > 1
    ("algo.kl_clamp=0", "algo.kl_clamp=0"),
    ("batch.prompts_per_mini_batch=48", "batch.prompts_per_mini_batch=48 does not divide batch.prompts_per_step=256"),
    ("novalue", "key=value"),
    ("rollout.kv_cache_memory_fraction=1.5", "rollout.kv_cache_memory_fraction=1.5: must be in (0, 1]"),
    ("rollout.kv_cache_memory_fraction=0", "rollout.kv_cache_memory_fraction=0.0: must be in (0, 1]"),
    ("rollout.kv_cache_max_bytes=0", "rollout.kv_cache_max_bytes=0: must be a size in bytes >= 1"),
    ("rollout.kv_cache_max_bytes=20GB", "rollout.kv_cache_max_bytes"),
])
def test_bad_override_names_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        load_run_config(overrides=[override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 1e-3\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(path) in str(err.value) and "optim.learning_rate" in str(err.value)


@pytest.mark.parametrize("yaml_text, message", [
    ("rollout:\n  temprature: 1.0\n", "key 'rollout.temprature' is not a config key (did you mean `rollout.temperature`?)"),
    ("temperature: 1.0\n", "key 'temperature' is not a config key (did you mean `rollout.temperature`?)"),
    ("data:\n  train:\n    - {pth: x.jsonl}\n", "key 'pth' is not a config key (did you mean `path`?)"),
    ("optim:\n  zzzz: 1\n", "key 'optim.zzzz' is not a config key"),
])
def test_a_mistyped_key_gets_the_nearest_key(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value) == f"{path}: {message}"


def test_wrong_type_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch:\n  micro_batch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match="batch.micro_batch_size"):
        load_run_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_run_config("nope.yaml")


@pytest.mark.parametrize("tp, pp, expected", [
    (5, 1, "tensor_model_parallel_size=5 does not divide num_attention_heads=12"),
    (4, 1, r"tensor_model_parallel_size=4 does not divide num_key_value_heads \(query groups\)=2"),
    (1, 3, "pipeline_model_parallel_size=3 does not divide num_hidden_layers=28"),
])
def test_model_shape_checks(tp, pp, expected):
    cfg = load_run_config(overrides=[f"parallel.tensor_model_parallel_size={tp}",
                                 f"parallel.pipeline_model_parallel_size={pp}"])
    with pytest.raises(ConfigError, match=expected):
        validate(cfg, R1_1P5B)


def test_world_size_must_hold_tp_times_pp():
    cfg = load_run_config(overrides=["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"])
    validate(cfg, world_size=8)
    with pytest.raises(ConfigError, match="world size 6 is not divisible"):
        validate(cfg, world_size=6)


@pytest.mark.skipif(accelerator.has_cuda(), reason="checks the error on a machine without a GPU")
def test_fp8_without_gpu_names_what_is_missing():
    with pytest.raises(ConfigError, match=r"model.fp8='hybrid' needs a CUDA GPU"):
        load_run_config(overrides=["model.fp8=hybrid"])
    with pytest.raises(ConfigError, match=r"model.transformer_impl='transformer_engine' needs a CUDA GPU"):
        load_run_config(overrides=["model.transformer_impl=transformer_engine"])


def test_fp8_without_transformer_engine_names_the_package(monkeypatch):
    if not accelerator.missing_for_transformer_engine():
        pytest.skip("Transformer Engine is usable here; this checks the message when it is not")
    # Pretend a GPU is present: the missing piece is then the package itself.
    monkeypatch.setattr(accelerator, "has_cuda", lambda: True)
    with pytest.raises(ConfigError, match="needs the 'transformer_engine' package"):
        load_run_config(overrides=["model.fp8=e4m3"])


def test_sequence_parallel_rejected_on_local_spec():
    with pytest.raises(ConfigError, match="sequence_parallel=true is not supported by the local layer spec"):
        load_run_config(overrides=["parallel.sequence_parallel=true", "model.transformer_impl=local"])


def test_overrides_reach_into_lists():
    cfg = load_run_config(ROOT / "configs/tiny_cpu.yaml", ["trainer.stages.0.steps=7", "data.train.0.size=5"])
    assert cfg.trainer.stages[0].steps == 7 and cfg.data.train[0].size == 5
    with pytest.raises(ConfigError, match="key 'trainer.stages.5.steps' is not a config key"):
        load_run_config(ROOT / "configs/tiny_cpu.yaml", ["trainer.stages.5.steps=7"])


def test_kv_cache_fraction_default_leaves_room_for_a_colocated_trainer():
    # TensorRT-LLM's own default (0.9 of the free memory) would leave the trainer nothing.
    assert load_run_config().rollout.kv_cache_memory_fraction == 0.5
    assert load_run_config(overrides=["rollout.kv_cache_memory_fraction=0.8"]).rollout.kv_cache_memory_fraction == 0.8
    # The byte cap is off unless set (TensorRT-LLM then sizes the cache by the fraction alone).
    assert load_run_config().rollout.kv_cache_max_bytes is None
    assert load_run_config(overrides=["rollout.kv_cache_max_bytes=21474836480"]).rollout.kv_cache_max_bytes == 20 << 30


def test_tensorrt_llm_engine_over_several_gpus_is_refused():
    load_run_config(overrides=["rollout.engine_tensor_parallel_size=2"])  # the transformers engine ignores it
    with pytest.raises(ConfigError, match="rollout.engine_tensor_parallel_size=2: the TensorRT-LLM engine runs on"):
        load_run_config(overrides=["rollout.engine=tensorrt_llm", "rollout.engine_tensor_parallel_size=2"])


def test_fp8_on_the_local_spec_is_refused_rather_than_silently_ignored():
    with pytest.raises(ConfigError, match=r"model.fp8='e4m3' needs model.transformer_impl='transformer_engine'.*"
                                          "would train without FP8"):
        load_run_config(overrides=["model.fp8=e4m3", "model.transformer_impl=local"])


@pytest.mark.parametrize("recipe, te, capability, problem", [
    ("delayed", "1.13.0", (9, 0), ""),
    ("tensorwise", "2.1.0", (9, 0), "needs Transformer Engine >= 2.2.0.dev0; this one is 2.1.0"),
    ("tensorwise", "2.2.0", (9, 0), ""),
    ("blockwise", "2.2.0", (9, 0), "needs Transformer Engine >= 2.3.0.dev0"),
    ("blockwise", "2.8.0+abc", (9, 0), ""),
    ("mxfp8", "2.8.0", (9, 0), "compute capability >= 10.0; this one is 9.0"),
    ("mxfp8", "2.8.0", (10, 0), ""),
    ("delayed", "2.8.0", (8, 0), "compute capability >= 8.9; this one is 8.0"),
])
def test_fp8_recipes_need_their_transformer_engine_and_gpu(recipe, te, capability, problem):
    got = accelerator.fp8_recipe_problem(recipe, te, capability)
    assert (problem in got) if problem else got == ""


def test_an_fp8_recipe_the_installed_transformer_engine_lacks_is_refused(monkeypatch):
    """The check runs in config validation (what a user on a GPU machine meets)."""
    import torch

    monkeypatch.setattr(accelerator, "missing_for_transformer_engine", lambda: "")
    monkeypatch.setattr(accelerator, "transformer_engine_version", lambda: "2.1.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    with pytest.raises(ConfigError, match=r"model.fp8_recipe='tensorwise': .*>= 2.2.0.dev0; this one is 2.1.0"):
        load_run_config(overrides=["model.fp8=e4m3", "model.fp8_recipe=tensorwise", "model.transformer_impl=transformer_engine"])
    load_run_config(overrides=["model.fp8=e4m3", "model.fp8_recipe=delayed", "model.transformer_impl=transformer_engine"])


def test_a_removed_key_says_what_to_do(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("rollout:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"old.yaml: key 'rollout.seed' was removed: .*trainer.seed; delete the key"):
        load_run_config(path)
    with pytest.raises(ConfigError, match=r"key 'rollout.seed' was removed"):
        load_run_config(overrides=["rollout.seed=3"])
