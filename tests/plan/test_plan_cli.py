"""`prorl plan` and the memory check of `prorl train`: tables, JSON, exit codes, one-line errors; the
refusal of an over-budget config on a (simulated) GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_prorl import cli

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs/prorl_1p5b_4node.yaml"
TINY = ROOT / "configs/tiny_cpu.yaml"
# DeepSeek-R1-Distill-Qwen-1.5B's config.json, the values that shape memory (its model card's
# config on the Hugging Face hub): planning needs no weights.
R1_1P5B = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536,
           "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
           "vocab_size": 151936, "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-6,
           "rope_theta": 10000, "max_position_embeddings": 131072, "use_sliding_window": False}


@pytest.fixture
def config_only_dir(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "config.json").write_text(json.dumps(R1_1P5B))
    return tmp_path / "r1"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_paper_config_fits_8_h100s_per_node_in_both_stages(capsys, config_only_dir):
    code, out, _ = run(capsys, "plan", PAPER, f"model.hf_dir={config_only_dir}", "--gpus", 32)
    assert code == 0, out
    for stage in ("8k", "16k"):
        assert f"stage {stage}: rows of" in out
    assert out.count("fits: peak") == 2 and "does NOT fit" not in out
    for term in ("kv_cache", "logits", "grad_buffer"):
        assert term in out
    # The trainer returns its allocator's blocks before the engine wakes from its sleep; without
    # the sleep they stay, and the plan counts them.
    assert "trainer_allocator_cache" not in out
    code, out, _ = run(capsys, "plan", PAPER, f"model.hf_dir={config_only_dir}", "rollout.sleep_during_training=false",
                       "--gpus", 32)
    assert "trainer_allocator_cache" in out


def test_json_has_the_documented_shape(capsys, config_only_dir):
    code, out, _ = run(capsys, "plan", PAPER, f"model.hf_dir={config_only_dir}", "--gpus", 32, "--json",
                       "--gpu-memory", "80GiB")
    plan = json.loads(out)
    assert code == 0 and set(plan) == {"gpu_memory_bytes", "stages"} and plan["gpu_memory_bytes"] == 80 << 30
    assert [s["name"] for s in plan["stages"]] == ["8k", "16k"]
    for stage in plan["stages"]:
        assert set(stage) == {"name", "fits", "peak_bytes", "phases"} and stage["fits"] is True
        assert set(stage["phases"]) == {"generation", "logprobs", "update", "wake"}
        for phase in stage["phases"].values():
            assert set(phase) == {"peak_bytes", "terms"}
            assert phase["peak_bytes"] == sum(phase["terms"].values())
        assert stage["peak_bytes"] == max(p["peak_bytes"] for p in stage["phases"].values())
    eight, sixteen = plan["stages"]
    assert sixteen["phases"]["update"]["terms"]["logits"] > 1.5 * eight["phases"]["update"]["terms"]["logits"]


def test_the_model_config_file_itself_is_enough(capsys):
    shipped = ROOT / "configs/models/deepseek-r1-distill-qwen-1.5b.json"
    code, out, _ = run(capsys, "plan", PAPER, f"model.hf_dir={shipped}", "--gpus", 32, "--json")
    assert code == 0 and len(json.loads(out)["stages"]) == 2


def test_the_tiny_config_plans_too(capsys):
    code, out, _ = run(capsys, "plan", TINY)
    assert code == 0 and "stage main" in out and "MiB" in out and "fits: peak" in out


def test_a_stage_that_does_not_fit_exits_1_with_what_would_fit(capsys, config_only_dir):
    code, out, _ = run(capsys, "plan", PAPER, f"model.hf_dir={config_only_dir}", "rollout.kv_cache_memory_fraction=0.9",
                       "model.recompute_activations=false", "rollout.sleep_during_training=false", "--gpus", 32)
    assert code == 1
    assert "does NOT fit" in out and "what would make it fit" in out
    assert "model.recompute_activations=true" in out and "rollout.kv_cache_memory_fraction=" in out


@pytest.mark.parametrize("argv, message", [
    (["--gpu-memory", "lots"], "--gpu-memory='lots'"),
    (["--gpus", "3"], "world size 3 is not divisible"),
    (["model.hf_dir=/nonexistent/model"], "/nonexistent/model"),
    (["parallel.tensor_model_parallel_size=4"], "does not divide num_key_value_heads"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, config_only_dir, argv, message):
    extra = [] if any(a.startswith("model.hf_dir") for a in argv) else [f"model.hf_dir={config_only_dir}"]
    overrides, flags = [a for a in argv if "=" in a], [a for a in argv if "=" not in a]
    code, out, err = run(capsys, "plan", PAPER, *extra, *overrides, *flags)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("prorl: error: ") and message in err, err


def test_train_refuses_a_config_over_the_gpus_memory(capsys, tmp_path):
    """On a (simulated) GPU of 64 MiB the tiny config's plan does not fit: one line naming the
    stage, the phase and the shortfall, exit 2, before any rank starts; the override runs it."""
    from helpers.devsim import DEVICE_MEMORY, simulated_cuda

    from megatron_prorl.config import load_config

    out_dir = tmp_path / "run"
    with simulated_cuda(megatron=False, memory=64 << 20) as sim:
        code, _, err = run(capsys, "train", TINY, f"trainer.output_dir={out_dir}")
        assert code == 2 and not out_dir.exists()
        line, = err.splitlines()
        assert line.startswith("prorl: error: memory plan: stage 'main' does not fit this GPU: ")
        assert "GiB of 0.06 GiB" in line and "GiB short" in line and "trainer.ignore_memory_plan=true" in line
        cfg = load_config(TINY, [f"trainer.output_dir={out_dir}", "trainer.ignore_memory_plan=true"])
        cli.check_before_start(cfg, 1)  # does not raise
        assert "running anyway" in capsys.readouterr().err
        sim.memory = DEVICE_MEMORY
        cli.check_before_start(load_config(TINY), 1)  # an H100's 80 GB: fits, and says so
    assert "prorl: memory plan: stage main: fits" in capsys.readouterr().err


def test_train_on_cpu_only_reports_the_plan(capsys):
    from megatron_prorl.config import load_config

    cli.check_before_start(load_config(TINY), 1)
    err = capsys.readouterr().err
    assert "prorl: memory plan: stage main: peak" in err and "error" not in err
