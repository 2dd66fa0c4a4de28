"""Whole tensors from a Megatron sharded state dict, whatever the layout that holds them.

Every rank's ShardedTensors (factories built first: fc1's gate and up halves) go to rank 0,
which writes each piece at its place (``global_slice``) in a tensor of the global shape. Two
layouts' results are then comparable key by key: the same key names the same parameter's (or
its optimizer state's) whole value at TP1 x PP1 and at TP2 x PP2.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_whole(sharded_state_dict) -> dict[str, torch.Tensor]:
    """Collective; rank 0 gets {key: whole tensor}, the other ranks {}. Places no rank holds stay
    NaN (so a gap cannot pass for data)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    apply_factories(sharded_state_dict)
    pieces = [(t.key, tuple(t.global_shape), t.global_slice(), t.data.detach().cpu().clone())
              for t in nested_values(sharded_state_dict) if isinstance(t, ShardedTensor)]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, pieces)
    if dist.get_rank() != 0:
        return {}
    whole: dict[str, torch.Tensor] = {}
    for rank_pieces in gathered:
        for key, shape, where, data in rank_pieces:
            target = whole.setdefault(key, torch.full(shape, float("nan"), dtype=data.dtype))
            target[where] = data
    return whole


def differences(saved: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors are not bit-identical. A vocabulary tensor padded to another TP
    (global shapes differ in rows) is compared over the rows both have, which hold the whole
    vocabulary; the padding rows beyond are not data."""
    if saved.keys() != loaded.keys():
        return [f"keys differ: {sorted(saved.keys() ^ loaded.keys())[:5]}"]
    out = []
    for key, a in saved.items():
        b = loaded[key]
        common = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape))
        if a.dim() != b.dim() or a.shape[1:] != b.shape[1:]:
            out.append(f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        elif not torch.equal(a[common], b[common]):
            out.append(f"{key}: max |diff| {(a[common] - b[common]).abs().nan_to_num(float('inf')).max().item()}")
    return out
