"""The algo section's names exist: each is looked up in its registry (a user's registered
estimator is as valid as a built-in one)."""

from megatron_prorl.algo.advantages import ADVANTAGES
from megatron_prorl.algo.kl import KL_ESTIMATORS
from megatron_prorl.algo.losses import AGG_MODES, POLICY_LOSSES
from megatron_prorl.config import AlgoConfig, choice


def check_config(a: AlgoConfig) -> None:
    choice("algo.loss_agg", a.loss_agg, AGG_MODES)
    for key, value, registry in (("algo.advantage", a.advantage, ADVANTAGES),
                                 ("algo.policy_loss", a.policy_loss, POLICY_LOSSES),
                                 ("algo.kl_estimator", a.kl_estimator, KL_ESTIMATORS)):
        choice(key, value, registry.names())
