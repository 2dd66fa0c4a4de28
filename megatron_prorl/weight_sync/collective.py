"""The weight sync's collective transport: TP gather and PP point-to-point sends.

Every rank of a model-parallel group walks the whole model in Hugging Face order; the owning
pipeline stage gathers each parameter's TP shards to its TP rank 0, rebuilds the HF tensors
there and sends them to the group's first rank (TP 0 of stage 0, where the rollout engine
lives). NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist

from checkpoint_convert.arch import HFArch
from checkpoint_convert.buckets import Bucket, nbytes, plan_buckets
from checkpoint_convert.checkpoint import unwrap_model
from checkpoint_convert.mapping import from_megatron_shards, hf_shapes
from checkpoint_convert.model_weights import layout_here


@torch.no_grad()
def export_to_first_rank(model, arch: HFArch, bucket_bytes: int) -> Iterator[Bucket]:
    """Yield the full model as buckets of (hf_name, full tensor) on the model-parallel group's
    first rank; the other ranks yield nothing but must iterate to the end (collective).

    Buckets hold at most ``bucket_bytes`` (a single larger tensor makes a bucket of its own).
    Tensors come in the model's parameter dtype, on its device; one may share memory with a
    live parameter, so consume (copy) each bucket before the parameters change. Padded
    vocabulary rows are dropped; a tied model has no ``lm_head.weight``.
    """
    from megatron.core import parallel_state as ps

    gpt = unwrap_model(model)
    layout = layout_here(arch)
    pp_rank, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    local = {layout.local_name(layout.param_for(n, pp_rank)): p for n, p in gpt.named_parameters()}
    device = next(iter(local.values())).device
    dtype = gpt.config.params_dtype
    shapes = hf_shapes(arch)
    plan = iter(plan_buckets([(n, nbytes(s, dtype)) for n, s in shapes.items()], bucket_bytes))
    receives = pp_rank == 0 and tp_rank == 0
    bucket: Bucket = []
    names = next(plan)
    for param in layout.params:
        if param.tied_copy:
            continue
        owner = layout.stage(param)
        tensors = {}
        if owner == pp_rank:
            shards = _gather_tp(local[layout.local_name(param)].detach(), layout.tp, tp_group)
            if shards is not None:
                tensors = from_megatron_shards(param, shards, layout)
        elif receives:
            tensors = {n: torch.empty(shapes[n], dtype=dtype, device=device) for n in param.hf_names}
        _send_to_first_stage(tensors, param.hf_names, owner, pp_rank, tp_rank, pp_group)
        if not receives:
            continue
        for name in param.hf_names:
            bucket.append((name, tensors[name]))
            if len(bucket) == len(names):
                yield bucket
                bucket, names = [], next(plan, None)


class CollectiveExport:
    """:func:`export_to_first_rank` as a sync source."""

    def __init__(self, model, arch: HFArch, bucket_bytes: int):
        self.model, self.arch, self.bucket_bytes = model, arch, bucket_bytes

    def __call__(self) -> Iterator[Bucket]:
        return export_to_first_rank(self.model, self.arch, self.bucket_bytes)

    def close(self) -> None:
        pass


def _gather_tp(shard: torch.Tensor, tp: int, group) -> Optional[list[torch.Tensor]]:
    """All TP shards of a parameter, on TP rank 0 (None on the others)."""
    if tp == 1:
        return [shard]
    shard = shard.contiguous()
    shards = [torch.empty_like(shard) for _ in range(tp)] if dist.get_rank(group) == 0 else None
    dist.gather(shard, shards, dst=dist.get_global_rank(group, 0), group=group)
    return shards


def _send_to_first_stage(tensors: dict, names, owner: int, pp_rank: int, tp_rank: int, group) -> None:
    """Full tensors from the owning stage's TP rank 0 to stage 0's TP rank 0."""
    if owner == 0 or tp_rank != 0:
        return
    for name in names:
        if pp_rank == owner:
            dist.send(tensors[name], dst=dist.get_global_rank(group, 0), group=group)
        elif pp_rank == 0:
            dist.recv(tensors[name], src=dist.get_global_rank(group, owner), group=group)
