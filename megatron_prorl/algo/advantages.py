"""Advantage estimators: per-response advantages from group rewards.

An estimator is called as ``fn(rewards, group_size, eps=..., scale_by_std=...)`` with flat,
group-contiguous rewards (see :mod:`megatron_prorl.algo.utils`) and returns one advantage per
response, ``[n_prompts * group_size]``. Add one with ``@register_advantage("name")``; it must
accept (and may ignore) those keyword options, which come from ``AlgoConfig``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from megatron_prorl.registry import Registry
from megatron_prorl.algo.utils import as_groups, group_has_variance

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")
register_advantage = ADVANTAGES.register
get_advantage = ADVANTAGES.get


@register_advantage("grpo")
def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True) -> Tensor:
    """GRPO: ``(r - mean(group)) / (std(group) + eps)``, the same value on all of a response's tokens.

    ``std`` is the unbiased (n - 1) sample std, torch's default, as in verl's GRPO.
    ``scale_by_std=False`` keeps only the mean baseline (Dr. GRPO). Groups whose rewards are all
    equal (see ``ZERO_VARIANCE_TOL``) get exactly 0: they carry no learning signal.
    """
    if group_size < 2:
        raise ValueError(f"GRPO needs group_size >= 2 (a lone response has no baseline), got {group_size}")
    groups = as_groups(rewards, group_size)
    adv = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (groups.std(dim=1, keepdim=True) + eps)
    return torch.where(group_has_variance(groups).unsqueeze(1), adv, 0).reshape(-1)


def broadcast_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Per-response ``[B]`` -> per-token ``[B, T]``: the response's value on its tokens, 0 elsewhere."""
    if advantages.dim() != 1 or mask.dim() != 2 or advantages.shape[0] != mask.shape[0]:
        raise ValueError(
            f"advantages {tuple(advantages.shape)} and mask {tuple(mask.shape)}: expected [B] and [B, T]")
    m = mask.bool()
    return advantages.unsqueeze(1).expand_as(m).where(m, 0)
