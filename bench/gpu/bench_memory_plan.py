"""Peak GPU memory per phase of a ProRL step, measured beside `prorl plan`'s prediction, on one GPU:
the first GPU run checks the memory model (megatron_prorl/plan/memory.py).

    python bench/gpu/bench_memory_plan.py [--prompt 1024 --response 2048 --prompts 2 --n 4
                                          --micro-batch 1 --no-recompute --engines transformers]

The trainer's own pieces in the order of Trainer.train_step, twice (the second step is measured:
the first allocates Adam's states and Megatron's buffers): the rollout engine generates (random
prompts, DeepSeek-R1-Distill-Qwen-1.5B's shapes with random weights, bf16, TP1), sleeps; the
PolicyActor computes old and reference log-probs (reference offloaded) and runs the mini-batch
update; the engine wakes and takes the weights (WeightSync). Per phase: torch.cuda.max_memory_allocated
after torch.cuda.reset_peak_memory_stats (the trainer process's tensors, and the transformers
engine's, which lives in it), max_memory_reserved (what its caching allocator holds), and the
plan's prediction for the same config without the runtime constants (no CUDA context, no
allocator cache: allocated bytes only). TensorRT-LLM's memory lives in its worker processes, so
for it the device-wide used bytes (mem_get_info) after each phase are recorded beside the plan's
full prediction (with the runtime constants). And the CUDA context and libraries of this process
(device used bytes minus memory_reserved once the actor is built, before any engine) beside the
plan's TRAINER_RUNTIME_BYTES.
Without CUDA it prints "no CUDA device" and exits.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from gpu_common import emit, engines, r1_distill_qwen_1p5b, require_cuda, write_random_hf_dir

GiB = 1 << 30
TEMPERATURE = 1.2


def _config(args, engine_name: str, hf_dir: str):
    from megatron_prorl.config import ProRLConfig, StageConfig

    cfg = ProRLConfig()
    cfg.model.hf_dir, cfg.model.dtype = hf_dir, "bf16"
    cfg.model.recompute_activations, cfg.model.offload_reference = not args.no_recompute, True
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = args.prompts
    cfg.batch.micro_batch_size = args.micro_batch
    cfg.rollout.engine, cfg.rollout.n = engine_name, args.n
    cfg.rollout.max_prompt_length, cfg.rollout.max_response_length = args.prompt, args.response
    cfg.trainer.generation_chunks = 1
    cfg.trainer.stages = [StageConfig(name="bench", steps=1)]
    return cfg


def _predicted(cfg, arch, runtime: bool) -> dict:
    import importlib.util

    from megatron_prorl.runtime.accelerator import resolve_transformer_impl
    from megatron_prorl.plan.inputs import Target, stage_inputs
    from megatron_prorl.plan.memory import Shape, phases

    target = Target(gpu_bytes=torch.cuda.mem_get_info()[1], gpus=1,
                    transformer_engine=resolve_transformer_impl(cfg.model) == "transformer_engine",
                    fused_adam=any(importlib.util.find_spec(m) is not None for m in ("transformer_engine", "apex")),
                    runtime_overheads=runtime)
    (_, inputs), = stage_inputs(cfg, Shape.of(arch), target)
    return {name: p.peak for name, p in phases(inputs).items()}


def _step(args, engine_name: str) -> dict:
    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.runtime import device
    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.train.batch import from_sequences
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.rollout import SamplingParams, build_engine_from_config
    from megatron_prorl.weight_sync import WeightSync

    hf_config = r1_distill_qwen_1p5b()
    arch = hf_arch(hf_config)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        hf_dir = str(write_random_hf_dir(Path(tmp) / "model", hf_config))
        cfg = _config(args, engine_name, hf_dir)
        init_distributed(cfg.parallel)
        actor = PolicyActor(cfg, arch)
        free, total = torch.cuda.mem_get_info()
        runtime = (total - free) - torch.cuda.memory_reserved()  # before any engine process starts
        engine = build_engine_from_config(cfg.rollout, hf_config=hf_config, hf_dir=hf_dir,
                                          eos_token_ids=[hf_config["eos_token_id"]], pad_token_id=0,
                                          device=device.current(), dtype=torch.bfloat16)
        sync = WeightSync(actor.policy_module, arch, engine, cfg.rollout.sync_bucket_mb << 20, "collective")
        sync()
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, arch.vocab_size, (args.prompt,), generator=g).tolist() for _ in range(args.prompts)]
        measured: dict[str, dict] = {}

        def phase(name, fn):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            out = fn()
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            m = measured.setdefault(name, {"allocated": 0, "reserved": 0, "device_used": 0})
            m["allocated"] = max(m["allocated"], torch.cuda.max_memory_allocated())
            m["reserved"] = max(m["reserved"], torch.cuda.max_memory_reserved())
            m["device_used"] = max(m["device_used"], total - free)
            return out

        for _ in range(2):
            measured.clear()
            params = SamplingParams(n=args.n, temperature=TEMPERATURE, max_new_tokens=args.response, seed=0)
            samples = phase("generation", lambda: device.to_host(engine.generate(prompts, params)))
            engine.sleep()
            batch = device.to_current(from_sequences(
                [prompts[s.prompt_index] for s in samples], [s.token_ids for s in samples],
                torch.randn(len(samples), generator=g).tolist(), engine_logprobs=[s.logprobs for s in samples]))
            batch.old_logprobs, _ = phase("logprobs", lambda: actor.forward_logprobs(batch, TEMPERATURE))
            batch.ref_logprobs, _ = phase("logprobs", lambda: actor.forward_logprobs(batch, TEMPERATURE, "reference"))
            phase("update", lambda: actor.update(batch, TEMPERATURE, kl_beta=1e-3))
            phase("wake", lambda: (engine.wake(), sync()))
        engine.shutdown()
        sync.close()
        out = {"measured": measured, "predicted": _predicted(cfg, arch, runtime=False),
               "predicted_with_runtime": _predicted(cfg, arch, runtime=True), "runtime_bytes": runtime,
               "device": torch.cuda.get_device_name(), "seq_len": batch.input_ids.shape[1]}
    shutdown_distributed()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=1024, help="prompt tokens")
    ap.add_argument("--response", type=int, default=2048, help="response tokens (max_new_tokens)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--no-recompute", action="store_true")
    ap.add_argument("--engines", default="transformers,tensorrt_llm")
    args = ap.parse_args()
    require_cuda()
    from megatron_prorl.runtime.launch import spawn
    from megatron_prorl.plan.memory import TRAINER_RUNTIME_BYTES

    print(f"{torch.cuda.get_device_name()}: R1-Distill-Qwen-1.5B shapes, bf16, TP1, {args.prompts} prompts x "
          f"{args.n}, {args.prompt}+{args.response} tokens, micro-batch {args.micro_batch}, "
          f"recompute {'off' if args.no_recompute else 'on'}")
    print(f"{'engine':13} {'phase':10} {'allocated':>10} {'plan':>8} {'ratio':>6} {'reserved':>9} {'device used':>11} "
          f"{'plan+runtime':>12}  (GiB)")
    for engine_name, missing in engines(args.engines.split(",")).items():
        if missing:
            print(f"{engine_name:13} skipped: {missing}")
            emit({"bench": "memory_plan", "name": f"memory plan vs measured ({engine_name})", "skipped": missing})
            continue
        r = spawn(_step, 1, args, engine_name, timeout=3600)[0]
        for name, m in r["measured"].items():
            predicted, full = r["predicted"][name], r["predicted_with_runtime"][name]
            # TensorRT-LLM's engine memory is outside this process: compare the device's used bytes.
            seen = m["device_used"] if engine_name == "tensorrt_llm" else m["allocated"]
            expected = full if engine_name == "tensorrt_llm" else predicted
            print(f"{engine_name:13} {name:10} {m['allocated'] / GiB:>10.2f} {predicted / GiB:>8.2f} "
                  f"{expected / seen:>6.2f} {m['reserved'] / GiB:>9.2f} {m['device_used'] / GiB:>11.2f} "
                  f"{full / GiB:>12.2f}", flush=True)
            emit({"bench": "memory_plan", "name": f"{name} peak vs plan ({engine_name})", "engine": engine_name,
                  "phase": name, "peak_memory_gib": m["allocated"] / GiB, "reserved_gib": m["reserved"] / GiB,
                  "device_used_gib": m["device_used"] / GiB, "plan_gib": predicted / GiB,
                  "plan_with_runtime_gib": full / GiB, "plan_ratio": expected / seen, "seq_len": r["seq_len"],
                  "device": r["device"]})
        print(f"{engine_name:13} CUDA context and libraries of the trainer process: {r['runtime_bytes'] / GiB:.2f} GiB "
              f"(the plan assumes {TRAINER_RUNTIME_BYTES / GiB:.2f})")
        emit({"bench": "memory_plan", "name": f"trainer runtime bytes ({engine_name})", "engine": engine_name,
              "runtime_gib": r["runtime_bytes"] / GiB, "plan_gib": TRAINER_RUNTIME_BYTES / GiB})


if __name__ == "__main__":
    main()
