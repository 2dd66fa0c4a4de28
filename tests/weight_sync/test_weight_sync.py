"""Weight sync: Megatron shards (TP2 x PP2, after a real update) -> the transformers engine.

After the sync the engine's weights equal the exported HF tensors bit for bit, whichever
transport carried them (the collective gather/send path and the shared-memory one agree, sync
after sync), and the log-probs the engine records while sampling equal the trainer's
recomputation for the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.hf_models import QWEN2, write_hf_dir
from megatron_prorl.runtime.launch import spawn


def _sync_after_update(hf_dir: str):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from checkpoint_convert import load_arch, load_hf_weights

    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.train.batch import from_sequences
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.rollout import SamplingParams, build_engine
    from megatron_prorl.weight_sync import SharedMemoryExport, WeightSync, build_source, export_to_first_rank

    cfg = ProRLConfig()
    cfg.parallel.tensor_model_parallel_size = cfg.parallel.pipeline_model_parallel_size = 2
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1
    cfg.optim.lr = 1e-2
    init_distributed(cfg.parallel)
    arch = load_arch(hf_dir)
    actor = PolicyActor(cfg, arch)
    load_hf_weights(actor.policy_module, arch, hf_dir)
    actor.sync_reference()
    engine_rank = dist.get_rank(ps.get_model_parallel_group()) == 0
    hf_config = json.loads((Path(hf_dir) / "config.json").read_text())
    engine = build_engine("transformers", hf_config=hf_config, eos_token_ids=[1], pad_token_id=0) if engine_rank else None

    g = torch.Generator().manual_seed(0)

    def update():  # a real update, so the synced weights are not the ones the engine could know
        batch = from_sequences([torch.randint(2, 100, (6,), generator=g).tolist() for _ in range(4)],
                               [torch.randint(2, 100, (8,), generator=g).tolist() for _ in range(4)],
                               [1.0, -1.0, 0.5, -0.5])
        batch.old_logprobs, _ = actor.forward_logprobs(batch, 1.0)
        batch.ref_logprobs = batch.old_logprobs
        return actor.update(batch, 1.0, kl_beta=1e-3)

    def recording(buckets, into):
        for bucket in buckets:
            into.update({n: t.clone() for n, t in bucket})
            yield bucket

    def sync(source):  # small buckets (many of them), to the engine rank only, as the trainer syncs
        exported = {}
        buckets = recording(source(), exported)
        if not engine_rank:
            for _ in buckets:
                pass
            return None, exported
        return engine.update_weights(buckets), exported

    shared = build_source(actor.policy_module, arch, 64 << 10)  # "auto" picks shared memory here
    assert isinstance(shared, SharedMemoryExport)
    agree = []
    for _ in range(2):  # twice: the second sync reuses the shared slots
        metrics = update()
        stats, exported = sync(shared)
        reference = {}
        for bucket in export_to_first_rank(actor.policy_module, arch, 64 << 10):
            reference.update({n: t.clone() for n, t in bucket})
        agree.append(exported.keys() == reference.keys()
                     and all(torch.equal(exported[n], reference[n]) for n in reference))
    shared.close()
    out = {"metrics": metrics}
    # The trainer's own sync (the facade): after one more update, the engine holds the export.
    update()
    weight_sync = WeightSync(actor.policy_module, arch, engine, 64 << 10, "collective")
    timing = weight_sync()
    weight_sync.close()
    exported = {n: t.clone() for b in export_to_first_rank(actor.policy_module, arch, 1 << 30) for n, t in b}
    if engine_rank:
        out["transports_agree"] = agree
        out["sync_seconds"] = timing.seconds
        state = engine.model.state_dict()
        out["bit_equal"] = all(torch.equal(state[n], t) for n, t in exported.items())
        out["names"] = sorted(exported)
        out["engine_names"] = sorted(state)
        out["buckets"] = stats.buckets
        prompts = [torch.randint(2, 100, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(3)]
        samples = engine.generate(prompts, SamplingParams(n=2, temperature=1.2, max_new_tokens=10, seed=3))
        payload = [([prompts[s.prompt_index] for s in samples], [s.token_ids for s in samples],
                    [s.logprobs for s in samples])]
    else:
        payload = [None]
    mp = ps.get_model_parallel_group()
    dist.broadcast_object_list(payload, src=dist.get_global_rank(mp, 0), group=mp)
    prompts, responses, engine_logprobs = payload[0]
    check = from_sequences(prompts, responses, [0.0] * len(prompts), engine_logprobs=engine_logprobs)
    trainer_logprobs, _ = actor.forward_logprobs(check, 1.2)
    if trainer_logprobs is not None:
        mask = check.loss_mask.bool()
        out["max_logprob_diff"] = (trainer_logprobs - check.engine_logprobs).abs()[mask].max().item()
        out["tokens"] = int(mask.sum())
    shutdown_distributed()
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    # 4 layers for PP=2 stages of 2; untied, so the lm_head is synced on its own.
    config = dict(QWEN2, num_hidden_layers=4, tie_word_embeddings=False)
    return str(write_hf_dir(tmp_path_factory.mktemp("sync") / "hf", config, seed=1, tokenizer=False))


def test_sync_after_tp2_pp2_update_is_exact(hf_dir):
    results = spawn(_sync_after_update, 4, hf_dir)
    engine = results[0]
    assert engine["metrics"]["update_skipped"] == 0
    assert engine["transports_agree"] == [True, True]
    assert engine["bit_equal"] and engine["sync_seconds"] > 0
    # Every engine parameter came through the sync (the untied lm_head included).
    assert engine["names"] == engine["engine_names"]
    assert engine["buckets"] > 1
    diffs = [r["max_logprob_diff"] for r in results if "max_logprob_diff" in r]
    assert diffs and all(d < 1e-4 for d in diffs), diffs
    assert all(r["tokens"] > 0 for r in results if "tokens" in r)
