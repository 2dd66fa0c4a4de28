"""The ProRL objective as pure functions: tensors in, tensors out, no distributed state.

GRPO advantages, the decoupled-clip (DAPO clip-higher) policy loss with exact micro-batch
aggregation, KL estimators to the reference policy, and DAPO dynamic sampling (its refill loop
included, over a caller's "generate one round"). Advantage estimators, policy losses and KL
estimators live in registries (:class:`megatron_prorl.registry.Registry`), so a new one is a
decorated function: ``@register_advantage``, ``@register_policy_loss``, ``@register_kl``.
:class:`PolicyObjective` binds the loss's settings once, from the ``algo`` config section.
"""

from megatron_prorl.algo.advantages import (
    ADVANTAGES,
    broadcast_advantages,
    get_advantage,
    grpo_advantages,
    register_advantage,
)
from megatron_prorl.algo.checks import check_config
from megatron_prorl.algo.dynamic_sampling import Filled, dynamic_sampling_mask, fill
from megatron_prorl.algo.kl import KL_ESTIMATORS, get_kl, kl_penalty, register_kl
from megatron_prorl.algo.losses import (
    AGG_MODES,
    MAX_METRICS,
    POLICY_LOSSES,
    aggregate,
    decoupled_clip,
    get_policy_loss,
    normalisers,
    policy_loss,
    register_policy_loss,
    tis_weights,
    total_loss,
)
from megatron_prorl.algo.objective import PolicyObjective
from megatron_prorl.algo.utils import ZERO_VARIANCE_TOL, masked_mean, masked_sum

__all__ = [
    "ADVANTAGES", "AGG_MODES", "KL_ESTIMATORS", "MAX_METRICS", "POLICY_LOSSES", "ZERO_VARIANCE_TOL",
    "Filled", "PolicyObjective",
    "aggregate", "broadcast_advantages", "check_config", "decoupled_clip", "dynamic_sampling_mask", "fill",
    "get_advantage", "get_kl", "get_policy_loss", "grpo_advantages", "kl_penalty", "masked_mean",
    "masked_sum", "normalisers", "policy_loss", "register_advantage", "register_kl",
    "register_policy_loss", "tis_weights", "total_loss",
]
