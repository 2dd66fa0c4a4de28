"""The ProRL objective with its settings bound once: built from ``AlgoConfig`` when the actor is
built, then called per micro-batch with what changes with the step (the stage's ``kl_beta``)
and the tensors. The math stays in :func:`~megatron_prorl.algo.losses.total_loss` and the
functions it calls; this object only holds the settings and the estimators resolved from their
registries, so a misspelt name fails at construction, naming its key, not at the first update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, TypeVar

from torch import Tensor

from megatron_prorl.algo.kl import KL_ESTIMATORS, KLFn
from megatron_prorl.algo.losses import AGG_MODES, POLICY_LOSSES, Count, PolicyLossFn, tis_weights, total_loss
from megatron_prorl.config import AlgoConfig, choice
from megatron_prorl.registry import Registry

T = TypeVar("T")


def _named(key: str, name: str, registry: Registry[T]) -> T:
    choice(key, name, registry.names())
    return registry.get(name)


@dataclass(frozen=True)
class PolicyObjective:
    """``pg_loss + kl_beta * KL - entropy_coef * entropy`` (see :func:`total_loss`), with
    truncated importance sampling of the engine's log-probs when ``tis_cap`` is set."""

    # No defaults: AlgoConfig is the one place that sets them.
    policy_loss: PolicyLossFn
    kl_estimator: KLFn
    agg: str
    eps_low: float
    eps_high: float
    clip_ratio_c: Optional[float]
    kl_clamp: Optional[float]
    entropy_coef: float
    tis_cap: Optional[float]

    @classmethod
    def from_config(cls, a: AlgoConfig) -> PolicyObjective:
        """The objective of ``a`` (the ``algo`` section). A name not in its registry, or an
        unknown aggregation, raises ConfigError naming the key (:func:`~megatron_prorl.algo.
        checks.check_config` builds one for that, before any rank starts); the values' ranges
        are :func:`megatron_prorl.config.check_fields`'s."""
        choice("algo.loss_agg", a.loss_agg, AGG_MODES)
        return cls(policy_loss=_named("algo.policy_loss", a.policy_loss, POLICY_LOSSES),
                   kl_estimator=_named("algo.kl_estimator", a.kl_estimator, KL_ESTIMATORS), agg=a.loss_agg,
                   eps_low=a.eps_low, eps_high=a.eps_high, clip_ratio_c=a.clip_ratio_c, kl_clamp=a.kl_clamp,
                   entropy_coef=a.entropy_coef, tis_cap=a.tis_cap)

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                 kl_beta: float, ref_logprobs: Optional[Tensor] = None, entropy: Optional[Tensor] = None,
                 engine_logprobs: Optional[Tensor] = None, num_tokens: Optional[Count] = None,
                 num_seqs: Optional[Count] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and metrics of one micro-batch (see :func:`total_loss`). ``num_tokens`` /
        ``num_seqs``: the whole mini-batch's counts, for exact aggregation over micro-batches and
        ranks. ``engine_logprobs`` are used only when ``tis_cap`` is set."""
        weights = None
        if self.tis_cap is not None and engine_logprobs is not None:
            weights = tis_weights(logprobs, engine_logprobs, self.tis_cap)
        if entropy is not None and not self.entropy_coef:
            entropy = entropy.detach()  # reported only: no graph to keep for it
        return total_loss(
            logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, entropy=entropy,
            kl_beta=kl_beta, kl_estimator=self.kl_estimator, kl_clamp=self.kl_clamp,
            entropy_coef=self.entropy_coef, policy_loss_kind=self.policy_loss, eps_low=self.eps_low,
            eps_high=self.eps_high, agg=self.agg, tis_weights=weights, num_tokens=num_tokens,
            num_seqs=num_seqs, clip_ratio_c=self.clip_ratio_c)
