"""A ProRL config (and the machine it is planned for) -> the memory model's inputs, per stage."""

from __future__ import annotations

import json
from dataclasses import dataclass

from checkpoint_convert.arch import hf_arch, read_hf_config
from megatron_prorl import builtin
from megatron_prorl.config import ConfigError, ProRLConfig
from megatron_prorl.plan.memory import (ENGINE_RUNTIME_BYTES, TRAINER_RUNTIME_BYTES, GiB, Inputs, MiB, Shape,
                                        pad_to)

# megatron_prorl/train/batch.py from_sequences pads every row to a multiple of 8 tokens.
ROW_MULTIPLE = 8
# H100 SXM 80 GB as NVML reports it (81,559 MiB; nvidia-smi's "Total").
H100_80GB = 81559 * MiB


@dataclass(frozen=True)
class Target:
    """The machine a config is planned for. The defaults are the GPU image's (Dockerfile:
    TensorRT-LLM's release image, with Transformer Engine and its FusedAdam)."""

    gpu_bytes: int = H100_80GB
    gpus: int = 8                    # the run's world size
    on_gpu: bool = True              # "auto" knobs resolve as on a CUDA machine
    transformer_engine: bool = True  # model.transformer_impl "auto" -> TE
    fused_adam: bool = True          # megatron-core picks TE/Apex FusedAdam when importable
    runtime_overheads: bool = True   # count CUDA contexts and the caching allocator's blocks


def _future(section, key: str, default=None):
    """A knob issue 22 adds (batch.max_tokens_per_micro_batch, batch.pack_sequences,
    model.logprob_chunk_tokens): its value once the config has it."""
    return getattr(section, key, default)


def stage_inputs(cfg: ProRLConfig, shape: Shape, target: Target) -> list[tuple[str, Inputs]]:
    """(stage name, inputs) for every stage of ``cfg``, on the most loaded GPU (a data-parallel
    replica's first rank, which holds the rollout engine)."""
    from megatron_prorl.train.stages import resolve_stages  # late: it imports the rollout package (torch)

    m, p, b, r = cfg.model, cfg.parallel, cfg.batch, cfg.rollout
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if target.gpus % (tp * pp):
        raise ConfigError(f"{target.gpus} GPUs are not divisible by tensor x pipeline parallel size {tp * pp}")
    dp = target.gpus // (tp * pp)
    if b.prompts_per_step % dp:
        raise ConfigError(f"batch.prompts_per_step={b.prompts_per_step} is not divisible by the data-parallel "
                          f"size {dp} ({target.gpus} GPUs / {tp * pp})")
    dtype = m.dtype if m.dtype != "auto" else ("bf16" if target.on_gpu else "fp32")
    param_bytes = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
    impl = m.transformer_impl if m.transformer_impl != "auto" else (
        "transformer_engine" if target.transformer_engine else "local")
    distributed = p.use_distributed_optimizer if p.use_distributed_optimizer is not None else target.on_gpu
    prompts = b.prompts_per_step // dp
    updates = b.prompts_per_step // b.prompts_per_mini_batch
    chunks = max(1, min(cfg.trainer.generation_chunks, prompts))
    per_call = -(-prompts // chunks)
    # "auto" as it resolves on the target (rollout.base.resolve_engine resolves it on this machine).
    engine = r.engine if r.engine != "auto" else ("tensorrt_llm" if target.on_gpu else "transformers")
    out = []
    for st in resolve_stages(cfg):
        per_call_rows = per_call * st.n
        if engine == "transformers" and r.engine_max_batch_size:
            per_call_rows = max(1, r.engine_max_batch_size // st.n) * st.n
        rows = prompts * st.n
        out.append((st.name, Inputs(
            shape=shape, tp=tp, pp=pp, dp=dp, sequence_parallel=p.sequence_parallel,
            distributed_optimizer=distributed, param_bytes=param_bytes, spec=impl,
            recompute=m.recompute_activations, fused_adam=target.fused_adam,
            offload_reference=m.offload_reference and target.on_gpu, kl=st.kl_beta > 0,
            seq_len=pad_to(r.max_prompt_length + st.max_response_length, ROW_MULTIPLE),
            prompt_len=r.max_prompt_length, response_len=st.max_response_length,
            rows=rows, mini_batch_rows=rows // updates, micro_batch_rows=b.micro_batch_size,
            max_tokens_per_micro_batch=_future(b, "max_tokens_per_micro_batch"),
            pack_sequences=bool(_future(b, "pack_sequences", False)),
            logprob_chunk_tokens=_future(m, "logprob_chunk_tokens"),
            engine=engine, engine_tp=r.engine_tensor_parallel_size, engine_bytes=param_bytes,
            sleep=r.sleep_during_training, kv_fraction=r.kv_cache_memory_fraction,
            kv_max_bytes=r.kv_cache_max_bytes, engine_rows=min(per_call_rows, rows),
            sync_bucket_bytes=r.sync_bucket_mb * MiB,
            # The trainer returns its allocator's cached blocks before the engine wakes
            # (train/trainer.py _release_and_wake), when the engine sleeps through the update.
            release_cache_before_wake=r.sleep_during_training,
            allocator_cache=target.runtime_overheads,
            trainer_runtime_bytes=TRAINER_RUNTIME_BYTES if target.runtime_overheads else 0,
            engine_runtime_bytes=ENGINE_RUNTIME_BYTES if target.runtime_overheads else 0,
            gpu_bytes=target.gpu_bytes)))
    return out


def parse_bytes(text: str) -> int:
    """"80GiB", "81559MiB", "80GB", "85899345920" -> bytes."""
    units = {"kib": 1 << 10, "mib": MiB, "gib": GiB, "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9,
             "tb": 10**12, "b": 1, "": 1}
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("kmgtib")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = None
    if value is None or unit not in units or value <= 0:
        raise ConfigError(f"--gpu-memory={text!r}: expected a size such as 80GiB, 81559MiB or 80GB")
    return int(value * units[unit])


def model_config(hf_dir: str) -> tuple[dict, str]:
    """The config.json (as a dict, and where it was read) of ``hf_dir``: a Hugging Face directory
    (only its config.json is needed: no weights), the config.json file itself, or
    "builtin:NAME" for a shipped model."""
    path = builtin.resolve(hf_dir)
    if path.is_file():
        try:
            return json.loads(path.read_text()), str(path)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model.hf_dir={hf_dir!r}: not valid JSON ({exc})") from None
    return read_hf_config(path), str(path / "config.json")


def shape_of(hf_dir: str) -> Shape:
    """The model's shape from ``hf_dir``'s config.json (see :func:`model_config`)."""
    config, source = model_config(hf_dir)
    return Shape.of(hf_arch(config, source=source))
