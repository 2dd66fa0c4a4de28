"""PolicyObjective: the loss's settings bound once from AlgoConfig, the math still total_loss's."""

import dataclasses

import pytest
import torch

from megatron_prorl.algo import KL_ESTIMATORS, PolicyObjective, decoupled_clip, normalisers, tis_weights, total_loss
from megatron_prorl.config import AlgoConfig, ConfigError
from megatron_prorl.train.validate import load_run_config

F64 = torch.float64


def _batch(seed: int = 0, b: int = 5, t: int = 6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=F64) * 3
    logp = old + torch.randn(b, t, generator=g, dtype=F64) * 0.4  # ratios on both sides of the clip
    mask = torch.rand(b, t, generator=g) < 0.7
    adv = torch.randn(b, generator=g, dtype=F64)
    # Past the dual clip: a negative advantage with ratios e^1.5 > clip_ratio_c.
    logp[0, :2], mask[0, :2], adv[0] = old[0, :2] + 1.5, True, -adv[0].abs()
    return dict(logprobs=logp, old_logprobs=old, advantages=adv, mask=mask,
                ref_logprobs=old + torch.randn(b, t, generator=g, dtype=F64) * 0.2,
                entropy=torch.rand(b, t, generator=g, dtype=F64) * 2,
                engine_logprobs=old + torch.randn(b, t, generator=g, dtype=F64) * 0.3)


def _run(fn, batch, **kw):
    """fn's loss, metrics and the gradients of log-probs and entropy (fresh leaves each call)."""
    lp, ent = batch["logprobs"].clone().requires_grad_(), batch["entropy"].clone().requires_grad_()
    loss, metrics = fn(lp, batch["old_logprobs"], batch["advantages"], batch["mask"],
                       ref_logprobs=batch["ref_logprobs"], entropy=ent, **kw)
    loss.backward()
    return loss.detach(), metrics, lp.grad, ent.grad


def test_built_from_config_with_names_resolved_once():
    obj = PolicyObjective.from_config(AlgoConfig(kl_estimator="k2", loss_agg="seq-mean-token-sum", tis_cap=2.0))
    assert obj.policy_loss is decoupled_clip and obj.kl_estimator is KL_ESTIMATORS.get("k2")
    assert (obj.agg, obj.eps_low, obj.eps_high, obj.clip_ratio_c, obj.kl_clamp, obj.entropy_coef, obj.tis_cap) == (
        "seq-mean-token-sum", 0.2, 0.4, 3.0, 10.0, 0.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.eps_high = 0.3


@pytest.mark.parametrize("field, value, message", [
    ("policy_loss", "decoupled_clp", "algo.policy_loss='decoupled_clp': expected one of 'decoupled_clip'"),
    ("kl_estimator", "low_var_kl", "algo.kl_estimator='low_var_kl': expected one of 'k1', 'k2', 'k3'"),
    ("loss_agg", "mean", "algo.loss_agg='mean': expected one of 'token-mean'"),
])
def test_a_bad_name_fails_at_construction_naming_its_key(field, value, message):
    with pytest.raises(ConfigError) as err:
        PolicyObjective.from_config(AlgoConfig(**{field: value}))
    assert str(err.value).startswith(message)
    # A run's config check builds the objective, so it fails the same way before any rank starts.
    with pytest.raises(ConfigError) as err:
        load_run_config(overrides=[f"algo.{field}={value}"])
    assert str(err.value).startswith(message)


SETTINGS = AlgoConfig(kl_estimator="k2", kl_clamp=5.0, loss_agg="seq-mean-token-mean", eps_low=0.1, eps_high=0.3,
                      clip_ratio_c=2.5, entropy_coef=0.01, tis_cap=1.2)


@pytest.mark.parametrize("kl_beta", [0.0, 0.05, 0.5])
def test_equals_total_loss_called_with_the_same_settings(kl_beta):
    """Bit for bit, loss, metrics and gradients, counts of a larger mini-batch given, per-call
    kl_beta reaching the loss exactly as total_loss's does."""
    batch = _batch()
    num_tokens, num_seqs = (2 * c for c in normalisers(batch["mask"]))  # as if a second micro-batch
    a = SETTINGS
    got = _run(PolicyObjective.from_config(a), batch, kl_beta=kl_beta, engine_logprobs=batch["engine_logprobs"],
               num_tokens=num_tokens, num_seqs=num_seqs)
    want = _run(total_loss, batch, kl_beta=kl_beta, kl_estimator=a.kl_estimator, kl_clamp=a.kl_clamp,
                entropy_coef=a.entropy_coef, policy_loss_kind=a.policy_loss, eps_low=a.eps_low,
                eps_high=a.eps_high, agg=a.loss_agg, clip_ratio_c=a.clip_ratio_c,
                tis_weights=tis_weights(batch["logprobs"], batch["engine_logprobs"], a.tis_cap),
                num_tokens=num_tokens, num_seqs=num_seqs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])
    assert got[1].keys() == want[1].keys() and all(torch.equal(got[1][k], want[1][k]) for k in want[1])
    assert got[1]["clip_frac_low"] > 0 and got[1]["clip_frac_high"] > 0 and got[1]["clip_frac_dual"] > 0


def test_kl_beta_is_per_call_and_changes_only_the_kl_term():
    batch, obj = _batch(1), PolicyObjective.from_config(SETTINGS)
    (loss0, m0, *_), (loss1, m1, *_) = (_run(obj, batch, kl_beta=beta) for beta in (0.0, 0.5))
    assert m1["kl"] > 0 and torch.equal(m0["kl"], m1["kl"]) and torch.equal(m0["pg_loss"], m1["pg_loss"])
    torch.testing.assert_close(loss1 - loss0, 0.5 * m1["kl"], rtol=1e-12, atol=0)


def test_engine_logprobs_weigh_tokens_only_when_tis_is_on():
    batch = _batch(2)
    for tis_cap, changes in ((None, False), (1.2, True)):
        obj = PolicyObjective.from_config(AlgoConfig(tis_cap=tis_cap))
        plain, weighted = (_run(obj, batch, kl_beta=0.0, engine_logprobs=e)[0]
                           for e in (None, batch["engine_logprobs"]))
        assert torch.equal(plain, weighted) is not changes


def test_entropy_gets_a_gradient_only_with_a_coefficient():
    batch = _batch(3)
    assert _run(PolicyObjective.from_config(AlgoConfig()), batch, kl_beta=0.0)[3] is None
    grad = _run(PolicyObjective.from_config(AlgoConfig(entropy_coef=0.01)), batch, kl_beta=0.0)[3]
    assert grad is not None and grad.abs().sum() > 0
