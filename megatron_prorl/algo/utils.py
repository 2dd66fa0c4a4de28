"""Masked reductions and the group layout of rewards, shared by every algo module.

Masking uses ``torch.where`` rather than multiplication, so whatever sits under a zero of the
mask (padding, garbage, even NaN) contributes exactly nothing to values or gradients.

Rewards are a flat tensor of ``n_prompts * group_size`` values laid out group-contiguous: the
responses to prompt ``p`` are ``rewards[p * group_size:(p + 1) * group_size]``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# A group's rewards count as all equal when max - min <= this. A range is exactly 0 for identical
# values in any dtype, where a computed std can be a rounding error above 0 (e.g. 0.3 in fp32).
ZERO_VARIANCE_TOL = 1e-8
# Bound on |log-ratio| before exp, as verl does for policy ratios and for k3: keeps exp finite in
# fp32 (exp(20) ~ 5e8), and such tokens are far outside any clip range or KL clamp.
LOG_RATIO_CLAMP = 20.0


def check_shape(x: Tensor, like: Tensor, what: str) -> Tensor:
    if x.shape != like.shape:
        raise ValueError(f"{what} has shape {tuple(x.shape)}, expected {tuple(like.shape)}")
    return x


def check_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` (bool or 0/1 of any dtype) as a bool tensor of ``like``'s shape."""
    return check_shape(mask, like, "mask").bool()


def masked_sum(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    x = torch.where(check_mask(mask, x), x, 0)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Mean over the unmasked entries (0 where there are none, rather than NaN)."""
    m = check_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1).to(x.dtype)


def as_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Flat group-contiguous rewards -> ``[n_prompts, group_size]`` (floating point)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (n_prompts * group_size,), got shape {tuple(rewards.shape)}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of group_size={group_size}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return rewards.view(-1, group_size)


def group_has_variance(groups: Tensor, tol: float = ZERO_VARIANCE_TOL) -> Tensor:
    """Bool ``[n_prompts]``: the group's rewards are not all equal (range above ``tol``)."""
    return (groups.amax(dim=1) - groups.amin(dim=1)) > tol
