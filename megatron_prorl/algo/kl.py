"""Per-token estimators of KL(pi || pi_ref) from sampled tokens' log-probabilities.

With ``d = ref_logprobs - logprobs`` (tokens sampled from pi), Schulman's estimators are
k1 = -d (unbiased, can be negative), k2 = d^2 / 2 (biased, >= 0) and k3 = exp(d) - d - 1
(unbiased, >= 0, low variance). Add one with ``@register_kl("name")``: ``fn(logprobs,
ref_logprobs) -> [B, T]``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from megatron_prorl.registry import Registry

KLFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")
register_kl = KL_ESTIMATORS.register
get_kl = KL_ESTIMATORS.get


@register_kl("k1")
def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return logprobs - ref_logprobs


@register_kl("k2")
def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return 0.5 * (logprobs - ref_logprobs).square()


@register_kl("k3")
def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    d = ref_logprobs - logprobs
    return torch.expm1(d) - d  # expm1 keeps the precision that exp(d) - 1 loses for small d


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3", clamp: Optional[float] = None) -> Tensor:
    """Per-token KL estimate of estimator ``kind``, optionally clamped to ``[-clamp, clamp]``
    (ProRL v2 clamped k2 to [-10, 10])."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape")
    kl = get_kl(kind)(logprobs, ref_logprobs.detach())
    if clamp is not None:
        if clamp <= 0:
            raise ValueError(f"KL clamp={clamp}: must be > 0")
        kl = kl.clamp(-clamp, clamp)
    return kl
