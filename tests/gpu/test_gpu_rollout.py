"""The transformers engine on CUDA, fed by the weight sync, as the trainer runs them: a bf16
policy on NCCL ranks (TP2 when two GPUs are visible) takes one update, syncs into the engine on
its engine rank's GPU (engine weights == the exported tensors, bit for bit), the engine samples
at T=1.2, and the trainer's recomputation of those tokens matches the engine's log-probs within
the bf16 tolerance of tests/helpers/gpu.py; then sleep, wake, sync and generate again, as around
every update. Separately, sleep/wake of a ~1 GB engine gives its memory back to the device and
takes it again, measured with torch.cuda.mem_get_info.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.gpu import (
    MODEL,
    TEMPERATURE,
    Tolerance,
    cuda_missing,
    gpu_marks,
    hf_logprobs,
    random_sequences,
    start_policy,
    tensor_parallel_size,
    trainer_recomputation,
    update_once,
)
from helpers.hf_models import EOS, PAD, write_hf_dir

from megatron_prorl.runtime.launch import spawn

pytestmark = gpu_marks(cuda_missing(), timeout=900)

# ~0.5B parameters (~1 GB in bf16): large beside allocator granularity and CUDA context noise.
BIG = dict(MODEL, hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16,
           num_key_value_heads=4, vocab_size=32000)
SAMPLING = dict(n=4, temperature=TEMPERATURE, max_new_tokens=24, seed=3)


def _exported(actor, arch) -> dict[str, torch.Tensor]:
    """The policy as the sync exports it, on the engine rank (empty elsewhere; collective)."""
    from megatron_prorl.weight_sync import export_to_first_rank

    return {n: t.clone() for bucket in export_to_first_rank(actor.policy_module, arch, 1 << 30) for n, t in bucket}


def _bit_exact(engine, exported: dict[str, torch.Tensor]) -> bool:
    """Every engine weight equals its exported tensor in the engine's dtype: a cast is the one
    change a sync may make (megatron-core's local spec, 0.16.1 and 0.17.0, builds its RMSNorm
    weights as fp32 torch.nn.RMSNorm even in a bf16 model, transformer/torch_norm.py)."""
    state = engine.model.state_dict()
    return state.keys() == exported.keys() and all(torch.equal(state[n], t.to(state[n].dtype))
                                                   for n, t in exported.items())


def _engine_run(hf_dir: str, tp: int) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_prorl.runtime import device
    from megatron_prorl.runtime.distributed import shutdown_distributed
    from megatron_prorl.rollout import SamplingParams, build_engine_from_config
    from megatron_prorl.weight_sync import WeightSync

    cfg, arch, actor = start_policy(hf_dir, "bf16", tp, engine="transformers")
    out = {"metrics": update_once(actor, seed=1)}
    engine = None
    if dist.get_rank(ps.get_model_parallel_group()) == 0:
        engine = build_engine_from_config(
            cfg.rollout, hf_config=json.loads((Path(hf_dir) / "config.json").read_text()), hf_dir=hf_dir,
            eos_token_ids=[EOS], pad_token_id=PAD, device=device.current(), dtype=torch.bfloat16)
    sync = WeightSync(actor.policy_module, arch, engine, 256 << 10, "collective")  # many buckets
    out["sync_seconds"] = sync().seconds
    exported = _exported(actor, arch)
    prompts, _ = random_sequences(6, seed=2)
    samples = None
    if engine is not None:
        out.update(bit_exact=_bit_exact(engine, exported), weights={n: t.cpu() for n, t in exported.items()},
                   devices=sorted({str(t.device) for t in [*exported.values(), *engine.model.parameters()]}))
        samples = engine.generate(prompts, SamplingParams(**SAMPLING))
    out.update(trainer_recomputation(actor, samples, prompts))
    # Around every update the trainer puts the engine to sleep, wakes it and syncs before sampling.
    if engine is not None:
        engine.sleep()
        engine.wake()
    sync()
    exported = _exported(actor, arch)
    if engine is not None:
        out["bit_exact_after_wake"] = _bit_exact(engine, exported)
        out["samples_after_wake"] = len(engine.generate(prompts[:2], SamplingParams(**SAMPLING)))
        engine.shutdown()
    sync.close()
    shutdown_distributed()
    return out


def _sleep_wake_memory() -> dict:
    from megatron_prorl.rollout import SamplingParams
    from megatron_prorl.rollout.hf_engine import TransformersEngine

    def free() -> int:
        torch.cuda.synchronize()
        return torch.cuda.mem_get_info()[0]

    engine = TransformersEngine(BIG, eos_token_ids=[EOS], pad_token_id=PAD, device="cuda:0", dtype=torch.bfloat16)
    params = SamplingParams(n=2, temperature=TEMPERATURE, max_new_tokens=8)
    engine.generate([[5] * 32] * 4, params)  # its KV cache and activations pass through the allocator too
    awake = free()
    engine.sleep()
    asleep = free()
    engine.wake()
    woken = free()
    return {"weights": sum(p.nbytes for p in engine.model.parameters()), "awake": awake, "asleep": asleep,
            "woken": woken, "samples": len(engine.generate([[5] * 8], params))}


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    hf_dir = write_hf_dir(tmp_path_factory.mktemp("gpu_rollout") / "hf", MODEL, seed=0)
    tp = tensor_parallel_size()
    return spawn(_engine_run, tp, str(hf_dir), tp, timeout=900)


def test_weight_sync_on_cuda_is_bit_exact(engine_run):
    engine = engine_run[0]
    assert engine["metrics"]["update_skipped"] == 0
    assert engine["bit_exact"] and engine["bit_exact_after_wake"]
    assert engine["devices"] == ["cuda:0"], engine["devices"]
    assert engine["sync_seconds"] > 0


def test_transformers_engine_on_cuda_samples_what_the_trainer_recomputes(engine_run):
    engine = engine_run[0]
    prompts, responses = engine["prompts"], engine["responses"]
    assert len(responses) == 6 * SAMPLING["n"] and engine["samples_after_wake"] == 2 * SAMPLING["n"]
    assert set(engine["finish_reasons"]) <= {"eos", "length"}
    assert all(r[-1] == EOS for r, why in zip(responses, engine["finish_reasons"]) if why == "eos")
    fp32 = hf_logprobs(engine["weights"], prompts, responses, torch.float32)
    yardstick = hf_logprobs(engine["weights"], prompts, responses, torch.bfloat16) - fp32
    control = hf_logprobs(engine["weights"], prompts, responses, torch.float32, temperature=1.0) - fp32
    for rank, out in enumerate(engine_run):  # every TP rank recomputes the same tokens
        problem = Tolerance.bf16(yardstick, bf16_sides=2).check(out["engine"], out["trainer"], control)
        assert not problem, f"rank {rank}: engine vs trainer log-probs: {problem}"


def test_transformers_engine_sleep_releases_its_memory():
    m = spawn(_sleep_wake_memory, 1, timeout=600)[0]
    released, taken_back = m["asleep"] - m["awake"], m["asleep"] - m["woken"]
    gib = {k: round(v / 2**30, 3) for k, v in m.items() if k != "samples"}
    assert released >= 0.9 * m["weights"], f"sleep released {released / 2**30:.3f} GiB: {gib}"
    assert taken_back >= 0.9 * m["weights"], f"wake took back {taken_back / 2**30:.3f} GiB: {gib}"
    assert m["samples"] == 2
