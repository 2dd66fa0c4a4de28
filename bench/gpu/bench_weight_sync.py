"""Weight-sync seconds on one GPU: a bf16 Megatron policy with DeepSeek-R1-Distill-Qwen-1.5B's
shapes (random weights, TP1) streamed into each rollout engine (transformers; TensorRT-LLM's
in-place refit when the targeted release and ray are installed), as after every update.

    python bench/gpu/bench_weight_sync.py [--repeats 3 --bucket-mb 512]

The trainer's own ``WeightSync`` (collective transport, rollout.sync_bucket_mb buckets) into an
engine built by ``build_engine_from_config``, each engine in a fresh NCCL process; the best of
--repeats syncs after a first one, then one generate call shows the engine usable with what it
received. GB/s = bytes delivered (HF tensors, bf16) / seconds. Peak memory is
torch.cuda.max_memory_allocated of the trainer process (policy, export buffers and, for the
transformers engine, the engine's weights). Without CUDA it prints "no CUDA device" and exits.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from gpu_common import emit, engines, peak_memory_gib, r1_distill_qwen_1p5b, require_cuda, write_random_hf_dir


def _sync(engine_name: str, repeats: int, bucket_mb: int) -> dict:
    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.runtime import device
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.models.builder import build_gpt_model
    from megatron_prorl.rollout import SamplingParams, build_engine_from_config
    from megatron_prorl.weight_sync import WeightSync

    cfg = ProRLConfig()
    cfg.model.dtype, cfg.rollout.engine = "bf16", engine_name
    init_distributed(cfg.parallel)
    hf_config = r1_distill_qwen_1p5b()
    arch = hf_arch(hf_config)
    model = build_gpt_model(arch, cfg.model, cfg.parallel)
    with tempfile.TemporaryDirectory(prefix="bench_sync_") as tmp:
        hf_dir = write_random_hf_dir(Path(tmp) / "model", hf_config) if engine_name == "tensorrt_llm" else None
        engine = build_engine_from_config(
            cfg.rollout, hf_config=hf_config, hf_dir=hf_dir and str(hf_dir), eos_token_ids=[hf_config["eos_token_id"]],
            pad_token_id=0, device=device.current(), dtype=torch.bfloat16)
        sync = WeightSync(model, arch, engine, bucket_mb << 20, "collective")
        timings = [sync() for _ in range(repeats + 1)][1:]
        best = min(timings, key=lambda t: t.seconds)
        generated = len(engine.generate([[5] * 16], SamplingParams(max_new_tokens=8))[0].token_ids)
        engine.shutdown()
    sync.close()
    out = {"sync_s": best.seconds, "gb_per_s": best.gb_per_s, "gb": best.gb_per_s * best.seconds,
           "generated": generated, "peak_memory_gib": peak_memory_gib()}
    shutdown_distributed()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, help="default: the trainer's (rollout.sync_bucket_mb)")
    ap.add_argument("--engines", default="transformers,tensorrt_llm")
    args = ap.parse_args()
    require_cuda()
    from megatron_prorl.config import RolloutConfig
    from megatron_prorl.runtime.launch import spawn

    args.bucket_mb = args.bucket_mb or RolloutConfig.sync_bucket_mb

    print(f"{torch.cuda.get_device_name()}: bf16 policy, TP1, {args.bucket_mb} MB buckets, best of {args.repeats}")
    print(f"{'engine':13} {'GB':>6} {'sync s':>8} {'GB/s':>7} {'peak GiB':>8}")
    for engine_name, missing in engines(args.engines.split(",")).items():
        name = f"weight sync policy -> {engine_name}"
        if missing:
            print(f"{engine_name:13} skipped: {missing}")
            emit({"bench": "weight_sync", "name": name, "skipped": missing})
            continue
        r = spawn(_sync, 1, engine_name, args.repeats, args.bucket_mb, timeout=3600)[0]
        print(f"{engine_name:13} {r['gb']:>6.2f} {r['sync_s']:>8.3f} {r['gb_per_s']:>7.1f} "
              f"{r['peak_memory_gib']:>8.1f}", flush=True)
        emit({"bench": "weight_sync", "name": name, "engine": engine_name, "bucket_mb": args.bucket_mb, **r})


if __name__ == "__main__":
    main()
