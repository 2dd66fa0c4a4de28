"""Megatron-Core on CUDA/NCCL: the policy's log-probs and one ProRL update in bf16 with the local
and the Transformer Engine layer specs, and in FP8 (TE, delayed scaling: the recipe Hopper
runs), on spawned ranks (TP2 when two GPUs are visible). The bf16 log-probs match the CPU fp32
path (the one every CPU test runs, here with CUDA hidden from its rank) within the bf16
tolerance of tests/helpers/gpu.py.

FP8 log-probs get no parity bound: E4M3 keeps 4 significant bits, and under delayed scaling the
first steps quantise with scales not yet fitted to the data, so no tolerance both passes a
correct run and fails a broken one; the FP8 case checks instead that every TE GEMM ran in FP8
with the delayed recipe and that the update trains (finite loss and gradient).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from helpers.gpu import (
    MODEL,
    TEMPERATURE,
    Tolerance,
    cuda_missing,
    gpu_marks,
    fp8_missing,
    hf_logprobs,
    random_sequences,
    skip_unless,
    start_policy,
    tensor_parallel_size,
    transformer_engine_missing,
    update_once,
)
from helpers.hf_models import PAD, write_hf_dir

from megatron_prorl.runtime.launch import spawn
from megatron_prorl.runtime.launcher_env import applied

pytestmark = gpu_marks(cuda_missing(), timeout=900)

N_SEQ = 8
SPECS = {  # id -> (transformer_impl, fp8)
    "local-bf16": ("local", None),
    "te-bf16": ("transformer_engine", None),
    "te-fp8": ("transformer_engine", "hybrid"),
}


def _te_linears(module) -> dict[str, str]:
    """How each Transformer Engine linear layer ran its last forward: "bf16", "fp8-delayed" or
    "fp8-other" (empty without TE layers). TE sets ``fp8`` and ``fp8_meta["recipe"]`` in every
    forward (TransformerEngineBaseModule.init_fp8_metadata, transformer_engine/pytorch/module/
    base.py, TE 1.x and 2.x); megatron-core's TE layers (0.16.1 and 0.17.0) subclass te.pytorch.Linear
    and LayerNormLinear, and its delayed recipe (TEDelayedScaling) subclasses DelayedScaling."""
    from megatron_prorl.runtime.accelerator import missing_for_transformer_engine

    if missing_for_transformer_engine():
        return {}
    import transformer_engine.pytorch as te
    from transformer_engine.common.recipe import DelayedScaling

    out = {}
    for name, m in module.named_modules():
        if isinstance(m, (te.Linear, te.LayerNormLinear)):
            if not getattr(m, "fp8", False):
                out[name] = "bf16"
            else:
                out[name] = "fp8-delayed" if isinstance(m.fp8_meta.get("recipe"), DelayedScaling) else "fp8-other"
    return out


def _policy_run(hf_dir: str, dtype: str, tp: int, transformer_impl: str, fp8, update: bool) -> dict:
    import torch.distributed as dist

    from megatron_prorl.runtime import device
    from megatron_prorl.train.batch import from_sequences
    from megatron_prorl.runtime.distributed import shutdown_distributed

    _, _, actor = start_policy(hf_dir, dtype, tp, transformer_impl, fp8)
    prompts, responses = random_sequences(N_SEQ, seed=0)
    host = from_sequences(prompts, responses, [0.0] * N_SEQ, pad_id=PAD)
    mask = host.loss_mask.bool()
    batch = device.to_current(host)
    logprobs, _ = actor.forward_logprobs(batch, TEMPERATURE)
    out = {"logprobs": logprobs.float().cpu()[mask]}
    if update:
        out["metrics"] = update_once(actor, seed=1)
        after, _ = actor.forward_logprobs(batch, TEMPERATURE)
        out.update(changed=(after - logprobs).float().abs().max().item(), backend=dist.get_backend(),
                   devices=sorted({str(p.device) for p in actor.policy_module.parameters()}),
                   te_linears=_te_linears(actor.policy_module))
    shutdown_distributed()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The CPU fp32 path's log-probs (a rank that sees no GPU), transformers' fp32 and bf16 ones
    (the yardstick) and the control, all for the same weights and tokens."""
    hf_dir = write_hf_dir(tmp_path_factory.mktemp("gpu_megatron") / "hf", MODEL, seed=0)
    with applied(os.environ, {**os.environ, "CUDA_VISIBLE_DEVICES": ""}):
        cpu = spawn(_policy_run, 1, str(hf_dir), "fp32", 1, "local", None, False)[0]["logprobs"]
    prompts, responses = random_sequences(N_SEQ, seed=0)
    fp32 = hf_logprobs(hf_dir, prompts, responses, torch.float32)
    assert (cpu - fp32).abs().max() < 1e-3, "the CPU fp32 path disagrees with transformers: fix that first"
    return {"dir": str(hf_dir), "cpu": cpu,
            "yardstick": hf_logprobs(hf_dir, prompts, responses, torch.bfloat16) - fp32,
            "control": hf_logprobs(hf_dir, prompts, responses, torch.float32, temperature=1.0) - fp32}


@pytest.mark.parametrize("spec", [
    "local-bf16",
    pytest.param("te-bf16", marks=skip_unless(transformer_engine_missing())),
    pytest.param("te-fp8", marks=skip_unless(fp8_missing())),
])
def test_policy_on_cuda_matches_cpu_fp32_and_trains(spec, reference):
    tp = tensor_parallel_size()
    transformer_impl, fp8 = SPECS[spec]
    tolerance = Tolerance.bf16(reference["yardstick"])
    runs = spawn(_policy_run, tp, reference["dir"], "bf16", tp, transformer_impl, fp8, True, timeout=900)
    for rank, out in enumerate(runs):
        assert out["backend"] == "nccl" and out["devices"] == [f"cuda:{rank}"], out
        metrics = out["metrics"]
        assert metrics["update_skipped"] == 0 and math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
        assert out["changed"] > 0, "the update left the bf16 weights unchanged"
        linears = out["te_linears"]
        if spec == "local-bf16":
            assert not linears, f"the local spec built Transformer Engine layers: {sorted(linears)[:3]}"
        else:
            assert linears and set(linears.values()) == {"fp8-delayed" if fp8 else "bf16"}, linears
        if fp8:
            assert torch.isfinite(out["logprobs"]).all()
        else:
            problem = tolerance.check(out["logprobs"], reference["cpu"], reference["control"])
            assert not problem, f"rank {rank}, {spec}: {problem}"


def _packed_run(hf_dir: str, tp: int, transformer_impl: str) -> dict:
    """Log-probs of the same batch packed into THD rows (token budget 96, chunked log-probs), and
    one packed update."""
    from megatron_prorl.runtime import device
    from megatron_prorl.runtime.distributed import shutdown_distributed
    from megatron_prorl.train.batch import from_sequences

    cfg, _, actor = start_policy(hf_dir, "bf16", tp, transformer_impl)
    cfg.batch.max_tokens_per_micro_batch, cfg.batch.pack_sequences, cfg.model.logprob_chunk_tokens = 96, True, 16
    prompts, responses = random_sequences(N_SEQ, seed=0)
    host = from_sequences(prompts, responses, [0.0] * N_SEQ, pad_id=PAD)
    batch = device.to_current(host)
    packed_rows = [mb["input_ids"].shape for mb in actor._micro_batches(batch, logprob_pass=True)]
    logprobs, _ = actor.forward_logprobs(batch, TEMPERATURE)
    metrics = update_once(actor, seed=1)
    shutdown_distributed()
    return {"logprobs": logprobs.float().cpu()[host.loss_mask.bool()], "metrics": metrics, "rows": packed_rows}


@pytest.mark.parametrize("spec", [
    "local-bf16",
    pytest.param("te-bf16", marks=skip_unless(transformer_engine_missing())),
])
def test_packed_thd_rows_on_cuda_match_cpu_fp32(spec, reference):
    """Packed sequences on the GPU: Transformer Engine's attention over THD rows (megatron-core
    0.16.1 PackedSeqParams, cu_seqlens; TEDotProductAttention runs them as padding_causal) and the
    local spec's per-sequence attention give the CPU fp32 log-probs of the unpacked batch within the
    bf16 tolerance, and a packed update trains. (On CPU, tests/train/test_long_sequences.py holds
    every mode to the unpacked reference within 1e-5 and runs the packed actor on the simulated
    device.)"""
    tp = tensor_parallel_size()
    transformer_impl, _ = SPECS[spec]
    runs = spawn(_packed_run, tp, reference["dir"], tp, transformer_impl, timeout=900)
    for rank, out in enumerate(runs):
        assert all(shape[0] == 1 for shape in out["rows"]) and len(out["rows"]) < N_SEQ, out["rows"]
        problem = Tolerance.bf16(reference["yardstick"]).check(out["logprobs"], reference["cpu"], reference["control"])
        assert not problem, f"rank {rank}, {spec} packed: {problem}"
        metrics = out["metrics"]
        assert metrics["update_skipped"] == 0 and math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
