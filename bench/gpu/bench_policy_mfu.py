"""Policy fwd+bwd MFU on one GPU: DeepSeek-R1-Distill-Qwen-1.5B's shapes (random weights), 8k
tokens per sequence, bf16, and FP8 where Transformer Engine runs it.

    python bench/gpu/bench_policy_mfu.py [--seq-len 8192 --seqs 4 --steps 3 --precisions bf16,fp8]

What runs: the trainer's own PolicyActor (Megatron-Core, TP1, the TE layer spec when TE imports,
else the local one) with the paper run's memory settings (configs/prorl_1p5b_4node.yaml:
recompute_activations on, the reference offloaded; --no-recompute turns recomputation off), one
mini-batch of --seqs sequences of --seq-len tokens (micro-batch 1), the ProRL loss
(decoupled clip, KL, log-probs on vocab-parallel logits at T=1.2). One update first (it
allocates the optimizer states, so the peak memory is a training step's), then --steps timed
fwd+bwd passes (``PolicyActor.forward_backward``: forward, loss, backward, gradients reduced;
no optimizer step), the median reported. The log-prob forward the trainer runs twice per step
(old and reference log-probs) is timed too.

MFU (model FLOPs utilisation) = achieved model FLOP/s / the GPU's peak dense FLOP/s:

- model FLOPs per token, fwd+bwd = 3 x forward FLOPs (backward = 2 x forward), counting the
  matrix multiplies only (2 FLOPs per multiply-add), at sequence length S, as Megatron-LM counts
  them (``num_floating_point_operations``, megatron/training/training.py, NVIDIA/Megatron-LM at
  001b00c2): per layer, QKV 2 h (h_q + 2 h_kv), output projection 2 h_q h, attention scores and
  values 2 x 2 h_q S/2 (causal: on average half the sequence is attended), gated MLP 3 x 2 h f;
  plus the logits 2 h V. h = 1536, h_q = 12 x 128, h_kv = 2 x 128, f = 8960, V = 151936, L = 28:
  11.38 GFLOP per token at S = 8192 (releases of Megatron-LM before the causal halving counted
  the full S: 13.49). Recomputed forwards are not model FLOPs (MFU, not HFU).
- achieved = tokens in the mini-batch x model FLOPs per token / median fwd+bwd seconds.
- peak dense tensor-core TFLOP/s by device name: H100 SXM (torch names it "NVIDIA H100 80GB
  HBM3") and H200 (SXM, "NVIDIA H200"), the same GH100 chip at the same clocks: 989.4 bf16 and
  1978.9 FP8 (NVIDIA's Hopper architecture whitepaper's peak table, as quoted on
  glennklockwood.com/garden/processors/h100; the H100 and H200 datasheets give 1,979 and 3,958
  "with sparsity", twice the dense rate). PCIe and NVL boards run lower clocks and power, and
  other GPUs are not in the table: for them MFU is not reported (the achieved TFLOP/s is). The
  bf16 run is measured against the bf16 peak, the FP8 run against the FP8 peak (its GEMMs run in
  FP8; attention and the logits stay bf16) and, for comparison, against the bf16 one.

Peak memory: torch.cuda.max_memory_allocated over the whole run (model, optimizer states,
activations, logits). Each precision runs in a fresh process. Without CUDA it prints
"no CUDA device" and exits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import torch
from gpu_common import emit, peak_memory_gib, r1_distill_qwen_1p5b, require_cuda

TEMPERATURE = 1.2
# Dense tensor-core peak TFLOP/s of the SXM H100 and H200 (see the module docstring for the source).
PEAK_TFLOPS = {"bf16": 989.4, "fp8": 1978.9}


def peak_tflops(device_name: str, precision: str) -> Optional[float]:
    """The peak for ``device_name`` (torch.cuda.get_device_name()), None when not in the table."""
    sxm = device_name.startswith(("NVIDIA H100", "NVIDIA H200")) and not any(
        board in device_name for board in ("PCIe", "NVL"))
    return PEAK_TFLOPS[precision] if sxm else None


def flops_per_token(arch, seq_len: int) -> float:
    """Model FLOPs of fwd+bwd per token at ``seq_len`` (see the module docstring)."""
    h, f, layers, vocab = arch.hidden_size, arch.ffn_hidden_size, arch.num_layers, arch.vocab_size
    h_q, h_kv = arch.num_heads * arch.head_dim, arch.num_query_groups * arch.head_dim
    per_layer = 2 * h * (h_q + 2 * h_kv) + 2 * h_q * h + 2 * 2 * h_q * seq_len / 2 + 3 * 2 * h * f
    return 3 * (layers * per_layer + 2 * h * vocab)


def _measure(precision: str, seq_len: int, seqs: int, steps: int, recompute: bool) -> dict:
    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.runtime import device
    from megatron_prorl.runtime.accelerator import missing_for_fp8
    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.train.batch import from_sequences
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.accelerator import resolve_transformer_impl
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed

    if precision == "fp8" and (missing := missing_for_fp8()):
        return {"skipped": f"FP8 needs {missing}"}
    cfg = ProRLConfig()
    cfg.model.dtype, cfg.model.recompute_activations, cfg.model.offload_reference = "bf16", recompute, True
    if precision == "fp8":
        cfg.model.transformer_impl, cfg.model.fp8, cfg.model.fp8_recipe = "transformer_engine", "hybrid", "delayed"
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1
    cfg.batch.micro_batch_size = 1
    init_distributed(cfg.parallel)
    arch = hf_arch(r1_distill_qwen_1p5b())
    actor = PolicyActor(cfg, arch)
    g = torch.Generator().manual_seed(0)
    prompt_len = seq_len // 8
    prompts = [torch.randint(0, arch.vocab_size, (prompt_len,), generator=g).tolist() for _ in range(seqs)]
    responses = [torch.randint(0, arch.vocab_size, (seq_len - prompt_len,), generator=g).tolist() for _ in range(seqs)]
    batch = device.to_current(from_sequences(prompts, responses, torch.randn(seqs, generator=g).tolist()))

    def timed(fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start, result

    forward_s, (batch.old_logprobs, _) = timed(lambda: actor.forward_logprobs(batch, TEMPERATURE))
    batch.ref_logprobs = batch.old_logprobs
    actor.update(batch, TEMPERATURE, kl_beta=1e-3)  # warm-up; allocates the optimizer states
    fwd_bwd_s = statistics.median(timed(lambda: actor.forward_backward(batch, TEMPERATURE, 1e-3))[0]
                                  for _ in range(steps))
    out = {"spec": resolve_transformer_impl(cfg.model), "tokens": seqs * batch.input_ids.shape[1],
           "fwd_bwd_s": fwd_bwd_s, "logprob_forward_s": forward_s, "peak_memory_gib": peak_memory_gib(),
           "device_name": torch.cuda.get_device_name(), "flops_per_token": flops_per_token(arch, seq_len)}
    shutdown_distributed()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--seqs", type=int, default=4, help="sequences per mini-batch (one micro-batch each)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precisions", default="bf16,fp8")
    ap.add_argument("--no-recompute", action="store_true", help="keep activations (no recomputation)")
    args = ap.parse_args()
    require_cuda()
    from megatron_prorl.runtime.launch import spawn

    print(f"{'precision':9} {'spec':18} {'tokens':>7} {'fwd+bwd s':>9} {'tokens/s':>9} {'MFU':>6} "
          f"{'logprob fwd tok/s':>17} {'peak GiB':>8}")
    for precision in args.precisions.split(","):
        name = f"policy fwd+bwd {precision} (seq {args.seq_len})"
        r = spawn(_measure, 1, precision, args.seq_len, args.seqs, args.steps, not args.no_recompute, timeout=3600)[0]
        if "skipped" in r:
            print(f"{precision:9} skipped: {r['skipped']}")
            emit({"bench": "policy_mfu", "name": name, "skipped": r["skipped"]})
            continue
        tokens_per_s = r["tokens"] / r["fwd_bwd_s"]
        achieved = tokens_per_s * r["flops_per_token"] / 1e12
        peak = peak_tflops(r["device_name"], precision)
        bf16_peak = peak_tflops(r["device_name"], "bf16")
        record = {"bench": "policy_mfu", "name": name, "precision": precision, "spec": r["spec"],
                  "recompute": not args.no_recompute, "seq_len": args.seq_len, "tokens": r["tokens"],
                  "fwd_bwd_s": r["fwd_bwd_s"], "tokens_per_s": tokens_per_s, "model_tflops": achieved,
                  "mfu": achieved / peak if peak else None,
                  "mfu_vs_bf16_peak": achieved / bf16_peak if bf16_peak else None,
                  "logprob_forward_tokens_per_s": r["tokens"] / r["logprob_forward_s"],
                  "peak_memory_gib": r["peak_memory_gib"], "device": r["device_name"]}
        mfu = f"{record['mfu']:6.1%}" if peak else "   n/a"
        print(f"{precision:9} {r['spec']:18} {r['tokens']:>7} {r['fwd_bwd_s']:>9.3f} {tokens_per_s:>9.0f} {mfu} "
              f"{record['logprob_forward_tokens_per_s']:>17.0f} {r['peak_memory_gib']:>8.1f}", flush=True)
        if not peak:
            print(f"  {r['device_name']}: no peak TFLOP/s in the table, MFU not reported "
                  f"({achieved:.0f} model TFLOP/s achieved)")
        emit(record)


if __name__ == "__main__":
    main()
