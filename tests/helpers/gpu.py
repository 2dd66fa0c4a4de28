"""What the GPU tests (tests/gpu) share: why a test cannot run on this machine, one small model's
config (written as a Hugging Face directory by helpers.hf_models.write_hf_dir), and the bf16
log-prob tolerance.

Skip reasons are found without importing ``tensorrt_llm`` (its import initialises MPI; the
engine imports it in the rank that builds it) and without touching CUDA on a machine without it.

The bf16 tolerance. bf16 keeps 8 significant bits (unit roundoff 2**-8 ~ 0.4%), and every
activation of a bf16 forward is rounded, so a log-prob carries the rounding of its logit and of
the log-partition, growing with depth and with the logits' size. An a-priori bound is loose by
orders of magnitude, so the tests measure bf16 rounding on the very weights and tokens they
compare: transformers' Qwen2 in bf16 against the same model in fp32, on the CPU (the
*yardstick*, an independent implementation). On this kind of model (init std 0.05, 4 layers,
random tokens, T=1.2) Megatron-Core's own bf16 path moved log-probs by 0.9x the yardstick's mean
and 0.8x its max on the CPU (0.0063 vs 0.0069 and 0.026 vs 0.031 nats; 1.1-1.3x at init 0.1;
measured 2026-11-30). A result is within tolerance when its mean and max |difference| stay
within ``SLACK`` x the yardstick's per bf16 side (GPU kernels round and accumulate differently:
fused attention, fp32 GEMM accumulation) plus a floor. The control: the same log-probs at T=1
instead of 1.2, a bug of the kind these tests exist to catch, must exceed the tolerance, or the
comparison could not tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

from helpers.hf_models import PAD, QWEN2
from megatron_prorl.runtime import accelerator

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"

# A Qwen2 small enough for seconds per test, shaped so every GPU path takes it: head_dim 64
# (flash attention, TensorRT-LLM's attention kernels), GEMM sizes multiples of 16 (FP8), the
# project's byte tokenizer's 261 ids (EOS 1, PAD 0). Init std 0.05: peaked enough that a
# temperature error is 20x the bf16 noise, small enough that bf16 stays well-behaved.
# Written to disk by hf_models.write_hf_dir(path, MODEL, seed).
MODEL = dict(QWEN2, hidden_size=256, intermediate_size=512, num_hidden_layers=4, vocab_size=261,
             max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.05)
TEMPERATURE = 1.2
SLACK = 3.0
FLOOR_MEAN, FLOOR_MAX = 1e-3, 1e-2


# ---- why a test cannot run here ------------------------------------------------------------

def cuda_missing() -> str:
    return "" if torch.cuda.is_available() else NO_CUDA


def transformer_engine_missing() -> str:
    if cuda_missing():
        return cuda_missing()
    missing = accelerator.missing_for_transformer_engine()
    return f"Transformer Engine is not importable: needs {missing}" if missing else ""


def fp8_missing() -> str:
    """Empty when TE can run FP8 with the delayed recipe on this GPU."""
    if transformer_engine_missing():
        return transformer_engine_missing()
    missing = accelerator.missing_for_fp8()
    return f"FP8 is unavailable: needs {missing}" if missing else ""


def tensorrt_llm_missing() -> str:
    from megatron_prorl.rollout.trtllm import missing_here

    return cuda_missing() or missing_here()


def skip_unless(reason: str):
    """A skip mark carrying ``reason`` when it is non-empty."""
    return pytest.mark.skipif(bool(reason), reason=reason or "available")


def gpu_marks(missing: str, timeout: int) -> list:
    """A GPU test module's marks: ``gpu`` (``pytest -m gpu``), skipped when ``missing`` says
    why, a timeout for spawned ranks on a real device, Megatron's TE/Apex fallback warnings off."""
    return [pytest.mark.gpu, pytest.mark.timeout(timeout), skip_unless(missing),
            pytest.mark.filterwarnings("ignore::UserWarning")]


def tensor_parallel_size() -> int:
    """2 when this node shows two GPUs or more, else 1 (the tests run on a single GPU too)."""
    return 2 if torch.cuda.is_available() and torch.cuda.device_count() >= 2 else 1


# ---- the model -----------------------------------------------------------------------------

def random_sequences(n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` (prompt, response) token lists of varied lengths (ids past the special tokens)."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> list[int]:
        return torch.randint(5, MODEL["vocab_size"], (int(torch.randint(low, high, (1,), generator=g)),),
                             generator=g).tolist()

    pairs = [(draw(6, 20), draw(12, 40)) for _ in range(n)]
    return [p for p, _ in pairs], [r for _, r in pairs]


def hf_logprobs(weights: dict[str, torch.Tensor] | Path, prompts, responses, dtype: torch.dtype,
                temperature: float = TEMPERATURE) -> torch.Tensor:
    """Response-token log-probs under softmax(logits / T) from transformers' Qwen2 on the CPU,
    flattened in the order of ``TrainBatch.loss_mask`` (row-major over the response tokens)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from megatron_prorl.train.batch import from_sequences

    if isinstance(weights, Path):
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_config(Qwen2Config(**MODEL), dtype=dtype)
        model.load_state_dict({n: t.to(dtype) for n, t in weights.items()})
    batch = from_sequences(prompts, responses, [0.0] * len(prompts), pad_id=PAD)
    with torch.no_grad():
        logits = model.eval()(batch.input_ids).logits.float() / temperature
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return logprobs[batch.loss_mask.bool()]


# ---- inside a rank -------------------------------------------------------------------------

def start_policy(hf_dir: str, dtype: str = "bf16", tp: int = 1, transformer_impl: str = "auto",
                 fp8: Optional[str] = None, **rollout):
    """Distributed state (NCCL with CUDA) and a PolicyActor holding ``hf_dir``'s weights, as the
    trainer starts them; ``rollout``: RolloutConfig fields. Returns (config, arch, actor)."""
    from checkpoint_convert import load_arch, load_hf_weights
    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed

    cfg = ProRLConfig()
    cfg.model.dtype, cfg.model.transformer_impl = dtype, transformer_impl
    if fp8 is not None:
        cfg.model.fp8, cfg.model.fp8_recipe = fp8, "delayed"
    cfg.parallel.tensor_model_parallel_size = tp
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1
    cfg.batch.micro_batch_size = 4
    cfg.optim.lr = 1e-3  # large enough to change bf16 weights in one update
    for key, value in rollout.items():
        setattr(cfg.rollout, key, value)
    init_distributed(cfg.parallel)
    arch = load_arch(hf_dir)
    actor = PolicyActor(cfg, arch)
    load_hf_weights(actor.policy_module, arch, hf_dir)
    actor.sync_reference()
    return cfg, arch, actor


def update_once(actor, seed: int) -> dict:
    """One real update on random sequences (the policy's weights move away from the file's)."""
    from megatron_prorl.runtime import device
    from megatron_prorl.train.batch import from_sequences

    prompts, responses = random_sequences(8, seed)
    batch = device.to_current(from_sequences(prompts, responses, torch.linspace(-1, 1, 8).tolist(), pad_id=PAD))
    batch.old_logprobs, _ = actor.forward_logprobs(batch, TEMPERATURE)
    batch.ref_logprobs = batch.old_logprobs
    return actor.update(batch, TEMPERATURE, kl_beta=1e-3)


def trainer_recomputation(actor, samples, prompts) -> dict:
    """The engine rank's ``samples`` (of ``prompts``) shared with its model-parallel group, and
    the trainer's log-probs of their tokens beside the engine's, flattened over response tokens
    (engine rank: pass the samples; other ranks: None)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_prorl.runtime import device
    from megatron_prorl.train.batch import from_sequences

    payload = [None if samples is None else
               ([prompts[s.prompt_index] for s in samples], [s.token_ids for s in samples],
                [s.logprobs.tolist() for s in samples], [s.finish_reason for s in samples])]
    group = ps.get_model_parallel_group()
    dist.broadcast_object_list(payload, src=dist.get_global_rank(group, 0), group=group)
    sample_prompts, responses, engine_logprobs, reasons = payload[0]
    host = from_sequences(sample_prompts, responses, [0.0] * len(responses), pad_id=PAD,
                          engine_logprobs=engine_logprobs)
    trainer, _ = actor.forward_logprobs(device.to_current(host), TEMPERATURE)
    mask = host.loss_mask.bool()
    return {"prompts": sample_prompts, "responses": responses, "finish_reasons": reasons,
            "engine": host.engine_logprobs[mask], "trainer": trainer.float().cpu()[mask]}


# ---- the tolerance -------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    mean: float
    max: float

    @classmethod
    def bf16(cls, yardstick: torch.Tensor, bf16_sides: int = 1) -> "Tolerance":
        """From the yardstick's |bf16 - fp32| per token; ``bf16_sides``: 1 for bf16 against fp32,
        2 for two bf16 computations against each other."""
        scale = SLACK * bf16_sides
        return cls(scale * yardstick.abs().mean().item() + FLOOR_MEAN, scale * yardstick.abs().max().item() + FLOOR_MAX)

    def check(self, got: torch.Tensor, want: torch.Tensor, control: Optional[torch.Tensor] = None) -> str:
        """"" when ``got`` matches ``want`` within tolerance (and ``control``, a difference the
        comparison must catch, does not), else what failed, with the numbers."""
        diff = (got.float() - want.float()).abs()
        problems = []
        if not torch.isfinite(got).all():
            problems.append(f"{int((~torch.isfinite(got)).sum())} non-finite values")
        elif diff.mean() > self.mean or diff.max() > self.max:
            problems.append(f"|diff| mean {diff.mean():.4g} max {diff.max():.4g} over {diff.numel()} tokens "
                            f"exceeds the tolerance mean {self.mean:.4g} max {self.max:.4g}")
        if control is not None and control.abs().mean() <= self.mean:
            problems.append(f"the control (T=1 instead of {TEMPERATURE}) differs by mean {control.abs().mean():.4g}, "
                            f"within the tolerance {self.mean:.4g}: the comparison could not catch it")
        return "; ".join(problems)
