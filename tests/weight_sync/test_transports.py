"""The weight sync's shared-memory transport: the scatter form of the mapping and the shared
arena between real processes (its end-to-end exactness is in test_weight_sync)."""

from __future__ import annotations

import pytest
import torch

from checkpoint_convert import mapping as M
from checkpoint_convert.arch import hf_arch
from megatron_prorl.runtime.launch import spawn


def _arch(family: str, tied: bool):
    # 8 heads in 4 query groups of head_dim 2; a vocabulary that TP pads.
    return hf_arch(dict(model_type=family, num_hidden_layers=4, hidden_size=16, intermediate_size=24,
                        num_attention_heads=8, num_key_value_heads=4, vocab_size=301, tie_word_embeddings=tied))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_each_rank_scattering_its_shard_rebuilds_every_hf_tensor_exactly_once(family, tied, tp):
    arch = _arch(family, tied)
    layout = M.Layout(arch, tp=tp, pp=2)
    g = torch.Generator().manual_seed(tp)
    hf = {name: torch.randn(shape, generator=g) for name, shape in M.hf_shapes(arch).items()}
    rebuilt = {name: torch.full_like(t, float("nan")) for name, t in hf.items()}
    writes = {name: torch.zeros_like(t) for name, t in hf.items()}
    for param in layout.params:
        if param.tied_copy:
            continue
        read = lambda n, rows: hf[n] if rows is None else hf[n][rows]  # noqa: E731
        shards = [M.to_megatron_shard(param, read, layout, r) for r in range(layout.tp)]
        for rank, shard in enumerate(shards):
            for name, hf_index, shard_index in M.shard_regions(param, layout, rank):
                rebuilt[name][hf_index] = shard[shard_index]
                writes[name][hf_index] += 1
    for name in hf:
        assert torch.equal(rebuilt[name], hf[name]), name
        assert torch.all(writes[name] == 1), name


def test_padded_vocabulary_rows_land_nowhere():
    layout = M.Layout(_arch("qwen2", False), tp=4)
    emb = layout.params[0]
    per_rank = layout.padded_vocab // 4
    rows = [M.shard_regions(emb, layout, r) for r in range(4)]
    assert sum(r[0][1][0].stop - r[0][1][0].start for r in rows if r) == 301
    assert all(r[0][2][0].stop <= per_rank for r in rows if r)


def _arena(shm_dir):
    import torch.distributed as dist

    from megatron_prorl.weight_sync.shared_memory import SharedArena, SharedMemoryUnavailable
    from megatron_prorl.config import ParallelConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed

    init_distributed(ParallelConfig())
    rank = dist.get_rank()
    try:
        arena = SharedArena(1 << 20, dist.group.WORLD, shm_dir=shm_dir)
    except SharedMemoryUnavailable as e:
        shutdown_distributed()
        return {"error": str(e)}
    # Each rank writes its own half; after a barrier every rank sees both.
    half = arena.buffer.numel() // 2
    arena.buffer[rank * half:(rank + 1) * half] = rank + 1
    dist.barrier()
    seen = (int(arena.buffer[0]), int(arena.buffer[-1]))
    arena.close()
    shutdown_distributed()
    return {"seen": seen}


def test_an_arena_is_one_memory_for_every_rank_and_leaves_no_file(tmp_path):
    results = spawn(_arena, 2, str(tmp_path))
    assert [r["seen"] for r in results] == [(1, 2), (1, 2)]
    assert list(tmp_path.iterdir()) == []  # unlinked once mapped


def test_without_shared_memory_every_rank_is_told_why(tmp_path):
    missing = str(tmp_path / "no-such-dir")
    results = spawn(_arena, 2, missing)
    assert all("no-such-dir" in r["error"] for r in results), results


def _two_replicas():
    from megatron.core import parallel_state as ps

    from megatron_prorl.weight_sync import SharedMemoryExport, build_source, export_to_first_rank
    from megatron_prorl.config import ModelConfig, ParallelConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.models.builder import build_gpt_model

    parallel = ParallelConfig(tensor_model_parallel_size=2)  # 4 ranks: two TP2 replicas
    init_distributed(parallel)
    arch = _arch("qwen2", False)
    model = build_gpt_model(arch, ModelConfig(), parallel)
    with torch.no_grad():  # replicas differ, so each must get its own weights
        for p in model.parameters():
            p.add_(ps.get_data_parallel_rank())

    def collect(buckets):
        return {n: t.clone() for bucket in buckets for n, t in bucket}

    source = build_source(model, arch, 4 << 10)
    shared = collect(source())
    reference = collect(export_to_first_rank(model, arch, 4 << 10))
    source.close()
    out = {"shared_memory": isinstance(source, SharedMemoryExport), "tensors": len(shared),
           "equal": shared.keys() == reference.keys() and all(torch.equal(shared[n], reference[n]) for n in shared),
           "embed_sum": float(shared["model.embed_tokens.weight"].sum()) if shared else None}
    shutdown_distributed()
    return out


def test_each_data_parallel_replica_gets_its_own_weights():
    results = spawn(_two_replicas, 4)
    assert all(r["shared_memory"] and r["equal"] for r in results), results
    leads = [r for r in results if r["tensors"]]
    assert len(leads) == 2 and leads[0]["embed_sum"] != leads[1]["embed_sum"]
    assert leads[0]["tensors"] == len(M.hf_shapes(_arch("qwen2", False)))
