"""The algorithm registries: user estimators by name, the built-ins listed on unknown names,
config checks (the Registry type itself: tests/test_registry.py)."""

import pytest
import torch

from megatron_prorl.algo import (
    get_advantage,
    kl_penalty,
    policy_loss,
    register_advantage,
    register_kl,
    register_policy_loss,
)
from megatron_prorl.config import ConfigError
from megatron_prorl.train.validate import load_run_config


def test_builtin_names_are_listed_on_unknown():
    with pytest.raises(KeyError, match="known: grpo"):
        get_advantage("ppo_gae")


# User extensions, registered the way a user would, once at import.
@register_advantage("test_rloo")
def rloo(rewards, group_size, eps=0.0, scale_by_std=False):
    g = rewards.view(-1, group_size)
    return (g - (g.sum(1, keepdim=True) - g) / (group_size - 1)).reshape(-1)


@register_policy_loss("test_reinforce")
def reinforce(log_ratio, advantages, mask, *, eps_low, eps_high, **_):  # **_: the trainer passes clip_ratio_c
    return -advantages * log_ratio, {"positive_frac": advantages > 0}


@register_kl("test_abs")
def abs_kl(logprobs, ref_logprobs):
    return (logprobs - ref_logprobs).abs()


def test_user_estimators_are_used_by_name():
    adv = get_advantage("test_rloo")(torch.tensor([1.0, 0.0, 0.0]), 3, eps=1e-6, scale_by_std=True)
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, -0.5]))

    logp = torch.zeros(1, 2, requires_grad=True)
    loss, metrics = policy_loss(logp, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2),
                                kind="test_reinforce", clip_ratio_c=3.0)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, 0.5]]))
    assert metrics["positive_frac"].item() == 0.5

    torch.testing.assert_close(kl_penalty(torch.tensor([1.0]), torch.tensor([3.0]), "test_abs"), torch.tensor([2.0]))


def test_config_accepts_registered_and_rejects_unknown_names():
    cfg = load_run_config(overrides=["algo.advantage=test_rloo", "algo.policy_loss=test_reinforce",
                                 "algo.kl_estimator=test_abs"])
    assert (cfg.algo.advantage, cfg.algo.kl_estimator) == ("test_rloo", "test_abs")
    with pytest.raises(ConfigError, match="algo.kl_estimator='low_var_kl'.*'k3'"):
        load_run_config(overrides=["algo.kl_estimator=low_var_kl"])
    with pytest.raises(ConfigError, match="algo.policy_loss"):
        load_run_config(overrides=["algo.policy_loss=ppo"])
    with pytest.raises(ConfigError, match="algo.kl_clamp"):
        load_run_config(overrides=["algo.kl_clamp=-1"])
