"""TensorRT-LLM (the release megatron_prorl/rollout/trtllm.py targets) as the trainer drives it,
on one GPU: the engine starts from one checkpoint's weights, samples, sleeps (its memory goes
back to the device, measured with torch.cuda.mem_get_info), wakes (the memory is mapped again),
is refit with the policy's weights (a different checkpoint) through the weight sync, and samples
again. Its processed log-probs (post-temperature) then match the trainer's recomputation of
the same tokens within the bf16 tolerance of tests/helpers/gpu.py, and those from before the
refit do not (the refit changed the weights, and the comparison can tell).

Skipped unless CUDA, the 'tensorrt_llm' package of the targeted release and ray are present
(checked without importing tensorrt_llm, whose import initialises MPI).
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
    gpu_marks,
    hf_logprobs,
    random_sequences,
    start_policy,
    tensorrt_llm_missing,
    trainer_recomputation,
)
from helpers.hf_models import EOS, PAD, write_hf_dir

from megatron_prorl.runtime.launch import spawn

pytestmark = gpu_marks(tensorrt_llm_missing(), timeout=1800)

KV_CACHE_FRACTION = 0.2  # of the memory free after the weights (rollout.kv_cache_memory_fraction)
SAMPLING = dict(n=4, temperature=TEMPERATURE, max_new_tokens=24, seed=3)


def _trtllm_run(engine_dir: str, policy_dir: str) -> dict:
    from megatron_prorl.runtime import device
    from megatron_prorl.runtime.distributed import shutdown_distributed
    from megatron_prorl.rollout import SamplingParams, build_engine_from_config
    from megatron_prorl.weight_sync import WeightSync

    def free() -> int:
        torch.cuda.synchronize()
        return torch.cuda.mem_get_info()[0]

    cfg, arch, actor = start_policy(policy_dir, "bf16", 1, engine="tensorrt_llm", refresh="refit",
                                    kv_cache_memory_fraction=KV_CACHE_FRACTION)
    prompts, _ = random_sequences(6, seed=2)
    params = SamplingParams(**SAMPLING)
    memory = {"before": free()}
    engine = build_engine_from_config(
        cfg.rollout, hf_config=json.loads((Path(engine_dir) / "config.json").read_text()), hf_dir=engine_dir,
        eos_token_ids=[EOS], pad_token_id=PAD, device=device.current(), dtype=torch.bfloat16)
    try:
        memory["started"] = free()
        before_refit = engine.generate(prompts, params)  # engine_dir's weights
        engine.sleep()
        memory["asleep"] = free()
        engine.wake()
        memory["woken"] = free()
        sync = WeightSync(actor.policy_module, arch, engine, cfg.rollout.sync_bucket_mb << 20, "collective")
        sync_seconds = sync().seconds
        after_refit = engine.generate(prompts, params)
    finally:
        engine.shutdown()
    out = {"memory": memory, "sync_seconds": sync_seconds,
           "before_refit": trainer_recomputation(actor, before_refit, prompts),
           "after_refit": trainer_recomputation(actor, after_refit, prompts)}
    shutdown_distributed()
    return out


@pytest.fixture(scope="module")
def trtllm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_trtllm")
    engine_dir, policy_dir = write_hf_dir(tmp / "engine", MODEL, seed=0), write_hf_dir(tmp / "policy", MODEL, seed=1)
    return policy_dir, spawn(_trtllm_run, 1, str(engine_dir), str(policy_dir), timeout=1500)[0]


def test_trtllm_refit_processed_logprobs_match_the_trainer(trtllm_run):
    policy_dir, run = trtllm_run
    after, before = run["after_refit"], run["before_refit"]
    assert run["sync_seconds"] > 0
    assert len(after["responses"]) == 6 * SAMPLING["n"]
    # EOS (id 1, in the tokenizer and generation_config.json) is the only stop token.
    assert set(after["finish_reasons"]) <= {"eos", "length"}
    assert all(r[-1] == EOS for r, why in zip(after["responses"], after["finish_reasons"]) if why == "eos")
    prompts, responses = after["prompts"], after["responses"]
    fp32 = hf_logprobs(policy_dir, prompts, responses, torch.float32)
    tolerance = Tolerance.bf16(hf_logprobs(policy_dir, prompts, responses, torch.bfloat16) - fp32, bf16_sides=2)
    control = hf_logprobs(policy_dir, prompts, responses, torch.float32, temperature=1.0) - fp32
    problem = tolerance.check(after["engine"], after["trainer"], control)
    assert not problem, f"after the refit, engine vs trainer log-probs: {problem}"
    assert tolerance.check(before["engine"], before["trainer"]), \
        "before the refit the engine (other weights) matched the trainer: the comparison cannot see a missed refit"


def test_trtllm_sleep_releases_and_wake_restores_memory(trtllm_run):
    m = trtllm_run[1]["memory"]
    footprint, released, taken_back = m["before"] - m["started"], m["asleep"] - m["started"], m["asleep"] - m["woken"]
    gib = {k: round(v / 2**30, 2) for k, v in m.items()}
    assert footprint > 0, gib
    # What stays: the Ray workers' CUDA contexts, NCCL and cuBLAS workspaces (< 1 GiB against a KV
    # cache of KV_CACHE_FRACTION of the free memory).
    assert released >= 0.75 * footprint, f"sleep released {released / 2**30:.2f} of {footprint / 2**30:.2f} GiB: {gib}"
    assert taken_back >= 0.75 * released, f"wake mapped {taken_back / 2**30:.2f} of {released / 2**30:.2f} GiB: {gib}"
