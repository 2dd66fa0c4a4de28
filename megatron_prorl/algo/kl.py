"""Per-token estimators of KL(pi || pi_ref) from sampled tokens' log-probabilities.

With ``d = ref_logprobs - logprobs`` (tokens sampled from pi), Schulman's estimators are
k1 = -d (unbiased, can be negative), k2 = d^2 / 2 (biased, >= 0) and k3 = exp(d) - d - 1
(unbiased, >= 0, low variance). Add one with ``@register_kl("name")``: ``fn(logprobs,
ref_logprobs) -> [B, T]``.

Clamping follows verl (``kl_penalty`` in verl/trainer/ppo/core_algos.py at commit 26b5d6b, the
mid-2025 v0.4.x line contemporary with ProRL): its k3 ("low_var_kl") bounds ``d`` to [-20, 20]
before ``exp`` and always clamps the estimate to [-10, 10]; its k1 ("kl") and k2 ("mse") are
never clamped. Here k3 bounds ``d`` the same way, and :func:`kl_penalty` clamps whichever
estimator is chosen to ``[-clamp, clamp]``, by default verl's 10: k3 then equals verl's, k2
equals ProRL v2's (k2 clamped to [-10, 10]), and ``clamp=None`` gives verl's unclamped k1 / k2.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from megatron_prorl.algo.utils import LOG_RATIO_CLAMP
from megatron_prorl.registry import Registry

KL_CLAMP = 10.0  # verl's bound on k3
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
    # Bounded as verl does: keeps exp(d) finite, so the zero gradient of a clamped estimate is not
    # 0 * inf = NaN.
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(d) - d  # expm1 keeps the precision that exp(d) - 1 loses for small d


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: Union[str, KLFn] = "k3",
               clamp: Optional[float] = KL_CLAMP) -> Tensor:
    """Per-token KL estimate of estimator ``kind`` (a registered name, or the estimator itself)
    clamped to ``[-clamp, clamp]`` (None: unclamped); see the module docstring for how this
    matches verl."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape")
    estimator = get_kl(kind) if isinstance(kind, str) else kind
    kl = estimator(logprobs, ref_logprobs.detach())
    if clamp is not None:
        if clamp <= 0:
            raise ValueError(f"KL clamp={clamp}: must be > 0")
        kl = kl.clamp(-clamp, clamp)
    return kl
