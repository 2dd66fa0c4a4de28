"""DAPO dynamic sampling: keep only prompts whose responses disagree, refill until the batch is full.

A group whose rewards are all equal (every response right, every response wrong, or the same
continuous score) has GRPO advantage 0 on every token, so it only dilutes the batch. "All equal"
means a reward range <= ``ZERO_VARIANCE_TOL`` (1e-8), the same test GRPO uses to zero a group.

The trainer's refill loop::

    rounds, masks = [], []
    for _ in range(max_sampling_rounds):
        rounds.append(generate_and_score(...))
        masks.append(dynamic_sampling_mask(rounds[-1].rewards, n))
        fill = fill_batch(masks, prompts_per_step)
        if fill.full:
            break
    batch = concat(rounds).select(response_indices(fill.selected, n))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from megatron_prorl.algo.utils import ZERO_VARIANCE_TOL, as_groups, group_has_variance


def dynamic_sampling_mask(rewards: Tensor, group_size: int, tol: float = ZERO_VARIANCE_TOL) -> Tensor:
    """Bool ``[n_prompts]``: True for groups whose rewards are not all equal (kept)."""
    return group_has_variance(as_groups(rewards, group_size), tol)


@dataclass(frozen=True)
class BatchFill:
    # Indices of the chosen groups into the concatenation of all rounds' groups, in order.
    selected: Tensor
    target: int
    # Over all rounds: informative groups (chosen or surplus) and zero-variance groups.
    num_kept: int
    num_dropped: int

    @property
    def full(self) -> bool:
        return self.selected.numel() == self.target


def fill_batch(keep_masks: Sequence[Tensor], target: int) -> BatchFill:
    """Choose the first ``target`` kept groups of successive sampling rounds' masks (earlier rounds
    first, as DAPO does; the surplus of the last round is discarded). Fewer when not enough were kept."""
    if target < 1:
        raise ValueError(f"fill_batch target={target}: must be >= 1")
    if not keep_masks:
        raise ValueError("fill_batch needs at least one round's keep mask")
    for i, m in enumerate(keep_masks):
        if m.dim() != 1:
            raise ValueError(f"keep mask of round {i} must be 1-D [n_prompts], got shape {tuple(m.shape)}")
    keep = torch.cat([m.bool() for m in keep_masks])
    kept = keep.nonzero().squeeze(1)
    return BatchFill(selected=kept[:target], target=target, num_kept=kept.numel(),
                     num_dropped=keep.numel() - kept.numel())


def response_indices(group_indices: Tensor, group_size: int) -> Tensor:
    """Group indices -> the indices of their responses in a flat, group-contiguous layout."""
    offsets = torch.arange(group_size, device=group_indices.device)
    return (group_indices.unsqueeze(1) * group_size + offsets).reshape(-1)
