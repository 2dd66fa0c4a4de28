"""Rollout tokens/s at T=1.2 on one GPU for each engine (transformers; TensorRT-LLM when the
targeted release and ray are installed), batch 64 and 256 (rows = prompts x n), with
DeepSeek-R1-Distill-Qwen-1.5B's shapes and random weights.

    python bench/gpu/bench_rollout.py [--batches 64,256 --n 8 --prompt-len 256 --new-tokens 512]

Engines are built as the trainer builds them (``build_engine_from_config`` with the default
rollout settings, bf16), each in a fresh process; TensorRT-LLM loads a Hugging Face directory
written first (random weights, the byte tokenizer). tokens/s counts generated tokens only, over
the whole batch's wall time after a warm-up call; the random model rarely samples EOS, so rows
run to --new-tokens. Peak memory is torch.cuda.max_memory_allocated of the process (the
transformers engine's weights, KV cache and activations); TensorRT-LLM allocates in its Ray
workers, so for it the device's used memory (torch.cuda.mem_get_info) is reported instead
(its KV cache takes rollout.kv_cache_memory_fraction of the free memory). Without CUDA it prints
"no CUDA device" and exits.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from gpu_common import emit, engines, peak_memory_gib, r1_distill_qwen_1p5b, require_cuda, write_random_hf_dir

TEMPERATURE = 1.2


def _generate(engine_name: str, batches: list[int], n: int, prompt_len: int, new_tokens: int) -> list[dict]:
    from megatron_prorl.config import RolloutConfig
    from megatron_prorl.rollout import SamplingParams, build_engine_from_config

    hf_config = r1_distill_qwen_1p5b()
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        hf_dir = write_random_hf_dir(Path(tmp) / "model", hf_config) if engine_name == "tensorrt_llm" else None
        engine = build_engine_from_config(
            RolloutConfig(engine=engine_name), hf_config=hf_config, hf_dir=hf_dir and str(hf_dir),
            eos_token_ids=[hf_config["eos_token_id"]], pad_token_id=0, device=torch.device("cuda", 0),
            dtype=torch.bfloat16)
        g = torch.Generator().manual_seed(0)
        engine.generate([[5] * prompt_len], SamplingParams(n=n, max_new_tokens=16))  # warm-up
        out = []
        for batch in batches:
            prompts = [torch.randint(5, hf_config["vocab_size"], (prompt_len,), generator=g).tolist()
                       for _ in range(max(1, batch // n))]
            params = SamplingParams(n=n, temperature=TEMPERATURE, max_new_tokens=new_tokens, seed=batch)
            torch.cuda.synchronize()
            start = time.perf_counter()
            samples = engine.generate(prompts, params)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            free, total = torch.cuda.mem_get_info()
            out.append({"batch": len(samples), "tokens": sum(len(s.token_ids) for s in samples), "seconds": seconds,
                        "peak_memory_gib": peak_memory_gib() if engine_name == "transformers" else None,
                        "device_used_gib": (total - free) / 2**30})
        engine.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="64,256", help="rows (prompts x n) per generate call")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--engines", default="transformers,tensorrt_llm")
    args = ap.parse_args()
    require_cuda()
    from megatron_prorl.runtime.launch import spawn

    batches = [int(b) for b in args.batches.split(",")]
    print(f"{torch.cuda.get_device_name()}: n={args.n} prompt_len={args.prompt_len} new_tokens={args.new_tokens} "
          f"T={TEMPERATURE}, bf16")
    print(f"{'engine':13} {'batch':>5} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'peak GiB':>8} {'device GiB':>10}")
    for engine_name, missing in engines(args.engines.split(",")).items():
        if missing:
            print(f"{engine_name:13} skipped: {missing}")
            emit({"bench": "rollout", "name": f"rollout {engine_name}", "skipped": missing})
            continue
        for r in spawn(_generate, 1, engine_name, batches, args.n, args.prompt_len, args.new_tokens, timeout=3600)[0]:
            tokens_per_s = r["tokens"] / r["seconds"]
            peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
            print(f"{engine_name:13} {r['batch']:>5} {r['tokens']:>8} {r['seconds']:>8.2f} {tokens_per_s:>9.0f} "
                  f"{peak:>8} {r['device_used_gib']:>10.1f}", flush=True)
            emit({"bench": "rollout", "name": f"rollout {engine_name} batch {r['batch']} T={TEMPERATURE}",
                  "engine": engine_name, "n": args.n, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                  "tokens_per_s": tokens_per_s, **r})


if __name__ == "__main__":
    main()
