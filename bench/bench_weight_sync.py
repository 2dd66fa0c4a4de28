"""Weight-sync benchmark on CPU: a TP2 x PP2 Megatron policy (~94M parameters, fp32) streamed to
the transformers engine, next to a plain in-memory copy of the same bytes in the same run.

    python bench/bench_weight_sync.py [--repeats 3] [--bucket-mb MB] [--tp 2 --pp 2]

Both transports run side by side: "collective" gathers every tensor over TP and sends it over PP
(gloo), "shared_memory" has every rank write its shards into shared HF-layout buckets (the
default on CPU); either way names and layouts become Hugging Face ones and the engine loads
them. The plain copy is `dst.copy_(src)` of the engine's own parameters (the floor for moving
those bytes once). Target: sync within 3x of the copy.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

HF_CONFIG = dict(model_type="qwen2", hidden_size=640, intermediate_size=1792, num_hidden_layers=12,
                 num_attention_heads=10, num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048,
                 rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, torch_dtype="float32")
TRANSPORTS = ("collective", "shared_memory")


def _run(repeats: int, bucket_mb: int, tp: int, pp: int) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.config import ModelConfig, ParallelConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.models.builder import build_gpt_model
    from megatron_prorl.rollout import build_engine
    from megatron_prorl.weight_sync import build_source

    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    init_distributed(parallel)
    arch = hf_arch(HF_CONFIG)
    model = build_gpt_model(arch, ModelConfig(), parallel)
    engine_rank = dist.get_rank(ps.get_model_parallel_group()) == 0
    engine = build_engine("transformers", hf_config=HF_CONFIG, eos_token_ids=[0]) if engine_rank else None
    sources = {t: build_source(model, arch, bucket_mb << 20, t) for t in TRANSPORTS}
    out = {}

    def sync(source):
        dist.barrier()
        buckets = source()
        if engine_rank:
            out["bytes"] = engine.update_weights(buckets).bytes
        else:
            for _ in buckets:
                pass
        dist.barrier()

    params = list(engine.model.parameters()) if engine_rank else []
    copies = [p.detach().clone() for p in params]

    @torch.no_grad()
    def copy():
        for p, c in zip(params, copies):
            p.copy_(c)

    runs = {**{t: functools.partial(sync, s) for t, s in sources.items()}, "copy": copy}
    times = {what: [] for what in runs}
    for _ in range(repeats + 1):  # interleaved rounds; the first one warms up allocations
        for what, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[what].append(time.perf_counter() - t0)
    out.update({what: min(t[1:]) for what, t in times.items()}, params=sum(p.numel() for p in params))
    for source in sources.values():
        source.close()
    shutdown_distributed()
    return out


def main():
    from megatron_prorl.config import RolloutConfig
    from megatron_prorl.runtime.launch import spawn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=RolloutConfig.sync_bucket_mb,
                    help="default: the trainer's (rollout.sync_bucket_mb)")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=2)
    args = ap.parse_args()
    r = spawn(_run, args.tp * args.pp, args.repeats, args.bucket_mb, args.tp, args.pp, timeout=1800)[0]
    gb = r["bytes"] / 1e9
    print(f"model: {r['params'] / 1e6:.1f}M parameters, {gb:.3f} GB fp32; TP{args.tp} x PP{args.pp} on "
          f"{args.tp * args.pp} CPU processes, {args.bucket_mb} MB buckets, best of {args.repeats}")
    print(f"{'':28} {'seconds':>8} {'GB/s':>7} {'x copy':>7}")
    for what, seconds in [(f"weight sync, {t}", r[t]) for t in TRANSPORTS] + [("plain in-memory copy", r["copy"])]:
        print(f"{what:28} {seconds:8.3f} {gb / seconds:7.2f} {seconds / r['copy']:7.1f}")


if __name__ == "__main__":
    main()
