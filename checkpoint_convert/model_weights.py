"""HF weights in and out of a live, model-parallel GPTModel.

:func:`load_hf_weights` fills each rank's parameters (its TP shard of its PP stage's layers)
straight from a HF directory, reading only that rank's rows. :func:`export_hf_weights` is the
weight sync's source: every rank of a model-parallel group walks the whole model in HF order;
the owning stage all-gathers each parameter over TP and rebuilds the HF tensors, then
broadcasts them over PP, so every rank sees every full tensor, one parameter at a time, handed
out in buckets of bounded size. :func:`weight_sync_source` picks the sync's transport: that
collective path, or shared memory for CPU ranks on one host (:mod:`checkpoint_convert.shared_memory`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from checkpoint_convert.checkpoint import unwrap_model
from checkpoint_convert.errors import ConversionError
from checkpoint_convert.mapping import Layout, from_megatron_shards, hf_shapes, to_megatron_shard
from checkpoint_convert.safetensors_io import HFWeights
from megatron_prorl.config import ConfigError
from megatron_prorl.rollout.base import Bucket
from megatron_prorl.rollout.buckets import plan_buckets
from megatron_prorl.models.builder import HFArch, resolve_hf_dir

log = logging.getLogger(__name__)


def _layout_here(arch: HFArch) -> Layout:
    from megatron.core import parallel_state as ps

    return Layout(arch, ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())


@torch.no_grad()
def load_hf_weights(model, arch: HFArch, hf_dir: os.PathLike) -> None:
    """Copy this rank's shard of the HF weights in ``hf_dir`` into ``model`` (cast to its dtype)."""
    from megatron.core import parallel_state as ps

    gpt = unwrap_model(model)
    layout = _layout_here(arch)
    pp_rank, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    expected = set(layout.stage_params(pp_rank))
    with HFWeights(resolve_hf_dir(str(hf_dir))) as weights:
        weights.validate(arch)
        seen = set()
        for name, tensor in gpt.named_parameters():
            param = layout.param_for(name, pp_rank)
            shard = to_megatron_shard(param, weights.read, layout, tp_rank)
            if shard.shape != tensor.shape:
                raise ConversionError(f"{name}: HF shard has shape {tuple(shard.shape)}, the model's parameter "
                                      f"{tuple(tensor.shape)}")
            tensor.copy_(shard)
            seen.add(layout.local_name(param))
    if seen != expected:
        raise ConversionError(f"pipeline stage {pp_rank} lacks parameters {sorted(expected - seen)[:3]}")


@torch.no_grad()
def export_hf_weights(model, arch: HFArch, bucket_bytes: int = 1 << 30, dtype: Optional[torch.dtype] = None,
                      only_first_rank: bool = False) -> Iterator[Bucket]:
    """Yield the full model as buckets of (hf_name, full tensor), on every rank of the MP group.

    Collective over the tensor- and pipeline-parallel groups: every rank of both must iterate
    to the end. Buckets hold at most ``bucket_bytes`` (a single larger tensor makes a bucket of
    its own). Tensors come in ``dtype`` (default: the model's parameter dtype), on the model's
    device; one may share memory with a live parameter, so consume (copy) each bucket before
    the parameters change. Padded vocabulary rows are dropped; a tied model has no
    ``lm_head.weight``.

    ``only_first_rank``: the weight sync's mode. Only the model-parallel group's first rank
    (TP 0 of PP stage 0, where the rollout engine lives) receives the tensors: shards are
    gathered to TP rank 0 of the owning stage and sent point to point, instead of reaching every
    rank; the other ranks yield nothing (but must still iterate).
    """
    from megatron.core import parallel_state as ps

    gpt = unwrap_model(model)
    layout = _layout_here(arch)
    pp_rank, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    local = {layout.local_name(layout.param_for(n, pp_rank)): p for n, p in gpt.named_parameters()}
    device = next(iter(local.values())).device
    out_dtype = dtype or gpt.config.params_dtype
    shapes = hf_shapes(arch)
    plan = iter(plan_buckets(tensor_bytes(shapes, out_dtype), bucket_bytes))
    receives = not only_first_rank or (pp_rank == 0 and tp_rank == 0)
    bucket: Bucket = []
    names = next(plan)
    for param in layout.params:
        if param.tied_copy:
            continue
        owner = layout.stage(param)
        tensors = {}
        if owner == pp_rank:
            shards = _gather_tp(local[layout.local_name(param)].detach(), layout.tp, tp_group, only_first_rank)
            if shards is not None:
                tensors = {n: t.to(out_dtype) for n, t in from_megatron_shards(param, shards, layout).items()}
        elif receives:
            tensors = {n: torch.empty(shapes[n], dtype=out_dtype, device=device) for n in param.hf_names}
        _move_pp(tensors, param.hf_names, owner, pp_rank, tp_rank, pp_group, layout.pp, only_first_rank)
        if not receives:
            continue
        for name in param.hf_names:
            bucket.append((name, tensors[name]))
            if len(bucket) == len(names):
                yield bucket
                bucket, names = [], next(plan, None)


def tensor_bytes(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> list[tuple[str, int]]:
    """(name, bytes) of each tensor of ``shapes`` in ``dtype``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return [(name, math.prod(shape) * itemsize) for name, shape in shapes.items()]


class CollectiveExport:
    """``export_hf_weights(only_first_rank=True)`` as a sync source."""

    def __init__(self, model, arch: HFArch, bucket_bytes: int):
        self.model, self.arch, self.bucket_bytes = model, arch, bucket_bytes

    def __call__(self) -> Iterator[Bucket]:
        return export_hf_weights(self.model, self.arch, self.bucket_bytes, only_first_rank=True)

    def close(self) -> None:
        pass


def weight_sync_source(model, arch: HFArch, bucket_bytes: int, transport: str = "auto"):
    """The sync source the trainer calls after every update: ``source()`` yields the model's
    buckets on the model-parallel group's first rank (the engine's), nothing on the others
    (collective: every rank iterates to the end); ``source.close()`` releases it.

    ``transport``: "collective" (TP gather and PP sends; NCCL on GPUs, gloo on CPU),
    "shared_memory" (CPU ranks of one host write into shared buckets, see
    :mod:`checkpoint_convert.shared_memory`), or "auto": shared memory for a CPU
    model-parallel group whose ranks share a host, collective otherwise.
    """
    from megatron.core import parallel_state as ps

    from checkpoint_convert.shared_memory import SharedMemoryExport, SharedMemoryUnavailable

    collective = CollectiveExport(model, arch, bucket_bytes)
    on_cpu = next(unwrap_model(model).parameters()).device.type == "cpu"
    if transport == "collective" or (transport == "auto" and (not on_cpu or dist.get_world_size(ps.get_model_parallel_group()) == 1)):
        return collective
    try:
        source = SharedMemoryExport(model, arch, bucket_bytes)
        log.info("weight sync: shared-memory transport (%d buckets)", len(source.plan))
        return source
    except SharedMemoryUnavailable as e:
        if transport == "shared_memory":
            raise ConfigError(f"rollout.sync_transport=shared_memory: {e}") from None
        log.warning("weight sync: shared memory unavailable (%s); using the collective transport", e)
        return collective


def _gather_tp(shard: torch.Tensor, tp: int, group, to_first: bool) -> Optional[list[torch.Tensor]]:
    """All TP shards of a parameter: everywhere, or (``to_first``) on TP rank 0 only."""
    if tp == 1:
        return [shard]
    shard = shard.contiguous()
    if not to_first:
        shards = [torch.empty_like(shard) for _ in range(tp)]
        dist.all_gather(shards, shard, group=group)
        return shards
    first = dist.get_rank(group) == 0
    shards = [torch.empty_like(shard) for _ in range(tp)] if first else None
    dist.gather(shard, shards, dst=dist.get_global_rank(group, 0), group=group)
    return shards


def _move_pp(tensors: dict, names, owner: int, pp_rank: int, tp_rank: int, group, pp: int, to_first: bool) -> None:
    """Full tensors from the owning stage: broadcast to every stage, or sent to stage 0 only
    (TP rank 0 to TP rank 0)."""
    if pp == 1 or (to_first and owner == 0):
        return
    if not to_first:
        for name in names:
            dist.broadcast(tensors[name], src=dist.get_global_rank(group, owner), group=group)
        return
    if tp_rank != 0:
        return
    for name in names:
        if pp_rank == owner:
            dist.send(tensors[name], dst=dist.get_global_rank(group, 0), group=group)
        elif pp_rank == 0:
            dist.recv(tensors[name], src=dist.get_global_rank(group, owner), group=group)
