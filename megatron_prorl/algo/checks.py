"""The algo section's names exist: each is looked up in its registry (a user's registered
estimator is as valid as a built-in one)."""

from megatron_prorl.algo.advantages import ADVANTAGES
from megatron_prorl.algo.objective import PolicyObjective
from megatron_prorl.config import AlgoConfig, choice


def check_config(a: AlgoConfig) -> None:
    choice("algo.advantage", a.advantage, ADVANTAGES.names())
    PolicyObjective.from_config(a)  # the loss's names, looked up as the actor will
