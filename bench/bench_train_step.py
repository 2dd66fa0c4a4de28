"""Training-step benchmark on CPU: policy fwd+bwd tokens/s for TP1 vs TP2 vs PP2, and the share
of the update's time spent outside Megatron's forward/backward schedule (target: < 10%).

    python bench/bench_train_step.py [--seqs 16 --seq-len 128 --steps 3]

A ~12M-parameter Qwen2-shaped model (6 layers, hidden 384, vocab 4096), random weights, fp32;
each layout runs in its own spawned gloo group, one thread per rank, side by side in one run.
"""

from __future__ import annotations

import argparse
import time

import torch

MODEL = dict(model_type="qwen2", hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
             num_attention_heads=6, num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512,
             rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)


def _layout_run(tp: int, pp: int, seqs: int, seq_len: int, steps: int) -> dict:
    import megatron_prorl.train.actor as actor_mod
    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.train.batch import from_sequences
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed

    cfg = ProRLConfig()
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1
    cfg.batch.micro_batch_size = 4
    init_distributed(cfg.parallel)
    arch = hf_arch(MODEL)
    actor = PolicyActor(cfg, arch)
    n_params = sum(p.numel() for p in actor.policy_module.parameters())

    inside = [0.0]
    run = actor_mod.run_pipeline

    def timed_run(*args, **kwargs):  # time spent inside Megatron's schedule (fwd+bwd+loss)
        t0 = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - t0

    actor_mod.run_pipeline = timed_run
    g = torch.Generator().manual_seed(0)
    prompt_len = seq_len // 4
    prompts = [torch.randint(0, arch.vocab_size, (prompt_len,), generator=g).tolist() for _ in range(seqs)]
    responses = [torch.randint(0, arch.vocab_size, (seq_len - prompt_len,), generator=g).tolist() for _ in range(seqs)]
    batch = from_sequences(prompts, responses, torch.randn(seqs, generator=g))
    batch.old_logprobs, _ = actor.forward_logprobs(batch, cfg.rollout.temperature)
    batch.ref_logprobs = batch.old_logprobs
    actor.update(batch, cfg.rollout.temperature, cfg.algo.kl_beta)  # warm-up
    inside[0] = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        actor.update(batch, cfg.rollout.temperature, cfg.algo.kl_beta)
    total = time.perf_counter() - t0
    shutdown_distributed()
    return {"params": n_params, "total": total, "inside": inside[0], "tokens": seqs * seq_len * steps}


def main():
    from megatron_prorl.runtime.launch import spawn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    print(f"{'layout':8} {'procs':>5} {'step s':>8} {'tokens/s':>9} {'vs TP1':>7} {'outside fwd/bwd':>16}")
    base = params = None
    for name, tp, pp in (("TP1", 1, 1), ("TP2", 2, 1), ("PP2", 1, 2)):
        r = spawn(_layout_run, tp * pp, tp, pp, args.seqs, args.seq_len, args.steps)[0]
        tps = r["tokens"] / r["total"]
        base, params = base or tps, params or r["params"]
        outside = 1 - r["inside"] / r["total"]
        print(f"{name:8} {tp * pp:>5} {r['total'] / args.steps:>8.3f} {tps:>9.0f} {tps / base:>6.2f}x {outside:>15.1%}")
    print(f"model: {params / 1e6:.1f}M parameters, {args.seqs} x {args.seq_len} tokens per update")


if __name__ == "__main__":
    main()
