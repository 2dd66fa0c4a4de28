"""The memory model against the real trainer step, measured.

The trainer's step (generation with the transformers engine, old and reference log-probs, the
mini-batch updates, wake and weight sync) runs on spawned ranks on the simulated CUDA device
(tests/helpers/devsim.py), which counts the bytes of live tensors per device like
torch.cuda.max_memory_allocated. Each phase's peak on each rank is measured at the second step
(the first allocates the optimizer states and Megatron's buffers) and compared with
megatron_prorl.plan.memory's prediction for the same config: within 10% per phase, at every
shape. The shapes make different terms dominate: the logits of the loss path (TP1, no
recomputation), the attention backward of a recomputed layer (long rows, offloaded reference),
TP2 with and without recomputation (the engine's rank and the other).

Negative control: the comparison fails when any of the terms that matter at these shapes is
removed from the prediction.

The GPU benchmark that checks the model on real GPUs (bench/gpu/bench_memory_plan.py) runs here
too, on the simulated device in bf16 at small shapes: its measurement and the plan agree.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from megatron_prorl.runtime.launch import spawn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOLERANCE = 0.10
BASE = ["model.hf_dir=builtin:tiny", "model.dtype=fp32", "model.load_weights=false", "rollout.n=4",
        "algo.dynamic_sampling=false", "rewards.num_workers=0", "rollout.max_prompt_length=86",
        "data.train=[{path: 'arithmetic:add', size: 64}]", "data.val=[]", "trainer.stages=[{name: s, steps: 2}]",
        "checkpoint.every=0", "logging.tensorboard=false", "logging.progress=false",
        "batch.prompts_per_step=2", "batch.prompts_per_mini_batch=1"]
# Every prompt of 2-digit additions is 86 tokens with the tiny model's byte tokenizer, and random
# weights rarely sample EOS, so rows are as long as the config allows (the model's worst case).
SHAPES = {
    1: [["batch.micro_batch_size=4", "rollout.max_response_length=16"],
        ["batch.micro_batch_size=2", "rollout.max_response_length=80", "model.recompute_activations=true",
         "model.offload_reference=true"]],
    2: [["batch.micro_batch_size=2", "rollout.max_response_length=24", "model.recompute_activations=true"],
        ["batch.micro_batch_size=4", "rollout.max_response_length=16"]],
}
# Terms that matter at these shapes: without any one of them some phase misses by more than 10%.
ESSENTIAL = ("policy_weights", "grad_buffer", "optimizer_states", "reference_weights",
             "layer_caches", "engine_weights", "logits", "activations", "activations_backward")


def _measure(tp: int, shape: list[str], out_dir: str) -> dict[str, int]:
    """The peak bytes of each phase of step 2 on this rank's device."""
    from helpers.devsim import simulated_cuda

    from megatron_prorl.config import load_config
    from megatron_prorl.runtime.distributed import shutdown_distributed
    from megatron_prorl.train.stages import stage_of
    from megatron_prorl.train.trainer import Trainer

    cfg = load_config(None, [*BASE, f"parallel.tensor_model_parallel_size={tp}", f"trainer.output_dir={out_dir}",
                             *shape])
    with simulated_cuda() as sim:
        trainer = Trainer(cfg)
        dev = f"cuda:{sim.current}"
        peaks: dict[str, int] = {}

        def measured(fn, phase):
            @functools.wraps(fn)
            def run(*args, **kwargs):
                name = phase(*args) if callable(phase) else phase
                sim.reset_peak()
                try:
                    return fn(*args, **kwargs)
                finally:
                    peaks[name] = max(peaks.get(name, 0), sim.max_allocated(dev))
            return run

        trainer._collect = measured(trainer._collect, "generation")
        trainer.actor.forward_logprobs = measured(trainer.actor.forward_logprobs, "logprobs")
        trainer.actor.update = measured(trainer.actor.update, "update")
        trainer._engine_call = measured(trainer._engine_call, lambda method: method)  # sleep, wake
        sync = trainer.weight_sync
        trainer.weight_sync = measured(sync, "wake")
        trainer.train_step(1, stage_of(trainer.stages, 1))
        peaks.clear()
        trainer.train_step(2, stage_of(trainer.stages, 2))
        trainer.weight_sync = sync
        trainer.close()
        shutdown_distributed()
    return peaks


def _predicted(tp: int, shape: list[str], rank: int) -> dict:
    from megatron_prorl.config import load_config
    from megatron_prorl.plan.inputs import Target, shape_of, stage_inputs
    from megatron_prorl.plan.memory import phases

    cfg = load_config(None, [*BASE, f"parallel.tensor_model_parallel_size={tp}", *shape])
    # As on the simulated GPU: the distributed optimizer and reference offload are on (CUDA is
    # "available"), the local layer spec and torch's AdamW (no TE/Apex), fp32; CUDA contexts and
    # allocator caches are not tensors, so they are left out.
    target = Target(gpus=tp, on_gpu=True, transformer_engine=False, fused_adam=False, runtime_overheads=False)
    (_, inputs), = stage_inputs(cfg, shape_of(cfg.model.hf_dir), target)
    return {name: p.terms for name, p in phases(inputs.with_(engine_here=rank == 0)).items()}


@pytest.fixture(scope="module")
def measurements(tmp_path_factory):
    rows = []
    for tp, shapes in SHAPES.items():
        for shape in shapes:
            out = tmp_path_factory.mktemp(f"tp{tp}")
            for rank, peaks in enumerate(spawn(_measure, tp, tp, shape, str(out), timeout=300)):
                rows.append({"tp": tp, "rank": rank, "overrides": shape, "measured": peaks,
                             "predicted": _predicted(tp, shape, rank)})
    return rows


def _misses(rows, drop: str = "") -> list[str]:
    misses = []
    for row in rows:
        for phase in ("generation", "logprobs", "update", "wake"):
            measured = row["measured"][phase]
            predicted = sum(v for k, v in row["predicted"][phase].items() if k != drop)
            if abs(predicted - measured) > TOLERANCE * measured:
                misses.append(f"TP{row['tp']} rank {row['rank']} {' '.join(row['overrides'])}: {phase} measured "
                              f"{measured} predicted {predicted} ({predicted / measured - 1:+.1%})")
    return misses


def _table(rows) -> str:
    lines = ["| shape | rank | phase | measured | predicted | error |", "|---|---|---|---|---|---|"]
    for row in rows:
        for phase in ("generation", "logprobs", "update", "wake"):
            m, p = row["measured"][phase], sum(row["predicted"][phase].values())
            lines.append(f"| TP{row['tp']} {' '.join(o.split('.')[-1] for o in row['overrides'])} | {row['rank']} | "
                         f"{phase} | {m:,} | {p:,} | {p / m - 1:+.1%} |")
    return "\n".join(lines)


def test_every_phase_peak_is_predicted_within_10_percent(measurements):
    print("\n" + _table(measurements))
    assert _misses(measurements) == []


@pytest.mark.parametrize("term", ESSENTIAL)
def test_removing_a_term_breaks_the_prediction(measurements, term):
    """Negative control: each of these terms is needed to come within 10%."""
    assert any(term in p for row in measurements for p in row["predicted"].values())
    assert _misses(measurements, drop=term), f"the prediction stays within 10% without {term}"


def _benchmark_on_the_simulated_device() -> dict:
    import argparse
    import sys

    from helpers.devsim import simulated_cuda

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))
    import bench_memory_plan
    import gpu_common

    small = {**gpu_common.r1_distill_qwen_1p5b(), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "bos_token_id": 1,
             "eos_token_id": 1}
    bench_memory_plan.r1_distill_qwen_1p5b = lambda: dict(small)
    args = argparse.Namespace(prompt=32, response=16, prompts=2, n=2, micro_batch=1, no_recompute=False)
    with simulated_cuda():
        return bench_memory_plan._step(args, "transformers")


def test_the_gpu_benchmark_measures_what_the_plan_predicts_in_bf16():
    r = spawn(_benchmark_on_the_simulated_device, 1)[0]
    assert set(r["measured"]) == {"generation", "logprobs", "update", "wake"}
    for phase, m in r["measured"].items():
        assert abs(r["predicted"][phase] / m["allocated"] - 1) < TOLERANCE, (phase, m, r["predicted"])
