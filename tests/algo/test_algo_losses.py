"""Decoupled-clip policy loss with verl's dual-clip, aggregation, micro-batch exactness, TIS and
the total loss."""

import math

import pytest
import torch

from megatron_prorl.algo import (
    AGG_MODES,
    MAX_METRICS,
    aggregate,
    decoupled_clip,
    normalisers,
    policy_loss,
    tis_weights,
    total_loss,
)

F64 = torch.float64

# One token per case, eps_low=0.2, eps_high=0.4: (advantage, ratio, clipped?, note)
CASES = [
    (1.0, 1.39, False, "A>0 just inside 1 + eps_high"),
    (1.0, 1.41, True, "A>0 just outside 1 + eps_high"),
    (1.0, 0.79, False, "A>0 below 1 - eps_low: min keeps r*A"),
    (-1.0, 0.79, True, "A<0 just outside 1 - eps_low"),
    (-1.0, 0.81, False, "A<0 just inside 1 - eps_low"),
    (-1.0, 1.41, False, "A<0 above 1 + eps_high: min keeps r*A"),
    (1.0, 1.0, False, "on policy"),
    (-2.0, 0.5, True, "A<0 far below 1 - eps_low"),
]


def _clip_batch():
    adv = torch.tensor([[a for a, _, _, _ in CASES]], dtype=F64)
    ratio = torch.tensor([[r for _, r, _, _ in CASES]], dtype=F64)
    logp = ratio.log().requires_grad_()
    return logp, torch.zeros_like(logp), adv, ratio, torch.ones_like(adv, dtype=torch.bool)


def test_clip_boundaries_values_gradients_and_metrics():
    logp, old, adv, ratio, mask = _clip_batch()
    loss, metrics = policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.4)
    clipped = ratio.clamp(0.8, 1.4)
    per_tok = [-(a * c) if clip else -(a * r) for (a, r, clip, _), c in zip(CASES, clipped[0].tolist())]
    n = len(CASES)
    torch.testing.assert_close(loss, torch.tensor(sum(per_tok) / n, dtype=F64), rtol=1e-12, atol=0)
    loss.backward()
    # d/dlogp of -A * exp(logp - old) = -A * r where unclipped, 0 where clipped
    expected = [0.0 if clip else -a * r / n for a, r, clip, _ in CASES]
    torch.testing.assert_close(logp.grad[0], torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    for (_, _, clip, note), g in zip(CASES, logp.grad[0].tolist()):
        assert (g == 0.0) == clip, note
    assert metrics["clip_frac_low"].item() == pytest.approx(2 / n)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / n)
    assert metrics["ratio_mean"].item() == pytest.approx(ratio.mean().item())
    assert metrics["ratio_max"].item() == pytest.approx(1.41)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())


# One token per case, eps_low=0.2, eps_high=0.4, clip_ratio_c=3:
# (advantage, ratio, per-token loss, its derivative in logp, capped by dual-clip?, note)
DUAL_CASES = [
    (-1.0, 2.9, 2.9, 2.9, False, "A<0 just under the cap: -A * r"),
    (-1.0, 3.1, 3.0, 0.0, True, "A<0 just over the cap: c * |A|, constant"),
    (-2.0, 10.0, 6.0, 0.0, True, "A<0 far over the cap"),
    (1.0, 10.0, -1.4, 0.0, False, "A>0 is never capped (clipped at 1 + eps_high)"),
    (-1.0, 0.5, 0.8, 0.0, False, "A<0 below 1 - eps_low: the ordinary clip"),
]


def _dual(c):
    adv = torch.tensor([[a for a, *_ in DUAL_CASES]], dtype=F64)
    log_ratio = torch.tensor([[r for _, r, *_ in DUAL_CASES]], dtype=F64).log().requires_grad_()
    loss, ind = decoupled_clip(log_ratio, adv, torch.ones_like(adv, dtype=torch.bool), eps_low=0.2, eps_high=0.4,
                               clip_ratio_c=c)
    loss.sum().backward()
    return loss.detach()[0], log_ratio.grad[0], ind


def test_dual_clip_caps_negative_advantages_at_c_times_abs_a():
    loss, grad, ind = _dual(3.0)
    torch.testing.assert_close(loss, torch.tensor([c[2] for c in DUAL_CASES], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, torch.tensor([c[3] for c in DUAL_CASES], dtype=F64), rtol=1e-12, atol=0)
    assert ind["clip_frac_dual"][0].tolist() == [c[4] for c in DUAL_CASES]


def test_dual_clip_disabled_keeps_the_plain_surrogate():
    loss, grad, ind = _dual(None)
    # The two capped tokens go back to -A * r with gradient -A * r; the rest are unchanged.
    torch.testing.assert_close(loss, torch.tensor([2.9, 3.1, 20.0, -1.4, 0.8], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, torch.tensor([2.9, 3.1, 20.0, 0.0, 0.0], dtype=F64), rtol=1e-12, atol=0)
    assert not ind["clip_frac_dual"].any()


def test_dual_clip_through_policy_and_total_loss():
    adv = torch.tensor([[a for a, *_ in DUAL_CASES]], dtype=F64)
    logp = torch.tensor([[r for _, r, *_ in DUAL_CASES]], dtype=F64).log().requires_grad_()
    old, mask, n = torch.zeros_like(logp), torch.ones_like(adv), len(DUAL_CASES)
    loss, m = policy_loss(logp, old, adv, mask)  # verl's default c = 3 applies
    assert loss.item() == pytest.approx(sum(c[2] for c in DUAL_CASES) / n)
    assert m["clip_frac_dual"].item() == pytest.approx(2 / n)
    loss, m = total_loss(logp, old, adv, mask, clip_ratio_c=5.0)  # the trainer's keyword flows through
    assert loss.item() == pytest.approx((2.9 + 3.1 + 10.0 - 1.4 + 0.8) / n)  # only A=-2, r=10 capped (at 10)
    assert m["clip_frac_dual"].item() == pytest.approx(1 / n)
    loss.backward()
    torch.testing.assert_close(logp.grad[0], torch.tensor([2.9, 3.1, 0.0, 0.0, 0.0], dtype=F64) / n)
    with pytest.raises(ValueError, match="clip_ratio_c=1.0: must be > 1"):
        policy_loss(logp, old, adv, mask, clip_ratio_c=1.0)


def test_dual_clip_matches_verl():
    """verl's compute_policy_loss (core_algos.py at 26b5d6b), transcribed, on random tokens."""
    g = torch.Generator().manual_seed(7)
    log_ratio = torch.randn(64, 32, generator=g, dtype=F64) * 1.5  # ratios from ~0.01 to ~100
    adv = torch.randn(64, 32, generator=g, dtype=F64)
    ratio = torch.exp(log_ratio)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - 0.2, 1 + 0.4)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -adv * 3.0
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    verl = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    verl_clipfrac_lower = torch.gt(clip_pg_losses1, pg_losses3) * (adv < 0)
    ours, ind = decoupled_clip(log_ratio, adv, torch.ones_like(adv, dtype=torch.bool), eps_low=0.2, eps_high=0.4)
    torch.testing.assert_close(ours, verl, rtol=0, atol=0)
    assert torch.equal(ind["clip_frac_dual"], verl_clipfrac_lower) and ind["clip_frac_dual"].any()


def test_per_response_and_per_token_advantages_agree():
    g = torch.Generator().manual_seed(1)
    logp, old = (torch.randn(3, 5, generator=g, dtype=F64) * 0.3 for _ in range(2))
    mask = torch.rand(3, 5, generator=g) < 0.7
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    a, _ = policy_loss(logp, old, adv, mask)
    b, _ = policy_loss(logp, old, adv[:, None].expand(3, 5), mask)
    torch.testing.assert_close(a, b)


def _random_batch(seed: int, b: int = 7, t: int = 6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=F64) * 3
    logp = old + torch.randn(b, t, generator=g, dtype=F64) * 0.4  # ratios well on both sides of the clip
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[2] = False  # a sequence with no response tokens
    mask[0, 0] = True
    adv = torch.randn(b, generator=g, dtype=F64)
    ref = old + torch.randn(b, t, generator=g, dtype=F64) * 0.2
    entropy = torch.rand(b, t, generator=g, dtype=F64) * 2
    tis = torch.rand(b, t, generator=g, dtype=F64) + 0.5
    return logp, old, adv, mask, ref, entropy, tis


def test_masked_tokens_have_no_effect_whatever_they_hold():
    logp, old, adv, mask, ref, entropy, tis = _random_batch(2)
    adv_tok = adv[:, None].expand_as(logp).clone()
    kw = dict(kl_beta=0.1, kl_estimator="k3", entropy_coef=0.01)

    def run(garbage):
        x = [t.clone() for t in (logp, old, adv_tok, ref, entropy, tis)]
        for t, value in zip(x, garbage):
            t[~mask] = value
        lp = x[0].requires_grad_()
        loss, metrics = total_loss(lp, x[1], x[2], mask, ref_logprobs=x[3], entropy=x[4], tis_weights=x[5], **kw)
        loss.backward()
        return loss, metrics, lp.grad

    clean_loss, clean_metrics, clean_grad = run([0.0] * 6)
    # huge values overflow exp() in any unguarded path; inf and NaN poison any multiplicative mask
    for garbage in ([1e4, -1e4, 1e4, -1e4, 1e4, 1e4], [math.inf, -math.inf, math.inf, math.nan, math.nan, math.inf],
                    [math.nan] * 6):
        loss, metrics, grad = run(garbage)
        torch.testing.assert_close(loss, clean_loss, rtol=0, atol=0)
        torch.testing.assert_close(grad, clean_grad, rtol=0, atol=0)
        assert metrics.keys() == clean_metrics.keys()
        for k in metrics:
            torch.testing.assert_close(metrics[k], clean_metrics[k], rtol=0, atol=0, msg=k)
    assert torch.isfinite(clean_grad).all() and (clean_grad[~mask] == 0).all() and (clean_grad[mask] != 0).any()


def test_aggregation_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0], [99.0] * 4], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert aggregate(x, mask, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate(x, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)  # empty row excluded
    assert aggregate(x, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(x, mask, "token-mean", num_tokens=20).item() == pytest.approx(10 / 20)
    assert aggregate(x, mask, "seq-mean-token-sum", num_seqs=torch.tensor(5)).item() == pytest.approx(10 / 5)
    for agg in AGG_MODES:
        assert aggregate(x, torch.zeros_like(mask), agg).item() == 0.0
    assert [n.item() for n in normalisers(mask)] == [4, 2]


def test_aggregation_bad_input():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        aggregate(x, mask, "seq-sum")
    with pytest.raises(ValueError, match="num_tokens=0"):
        aggregate(x, mask, "token-mean", num_tokens=0)
    with pytest.raises(ValueError, match="mask has shape"):
        aggregate(x, torch.ones(2, 4), "token-mean")
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_loss(x, x, torch.zeros(2, 4), mask)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batch_split_sums_to_full_batch(agg):
    logp, old, adv, mask, ref, entropy, tis = _random_batch(3)
    kw = dict(ref_logprobs=ref, entropy=entropy, tis_weights=tis, kl_beta=0.05, entropy_coef=0.01, agg=agg)
    full_lp = logp.clone().requires_grad_()
    full, full_metrics = total_loss(full_lp, old, adv, mask, **kw)
    full.backward()
    assert full_metrics["clip_frac_low"] > 0 and full_metrics["clip_frac_high"] > 0

    splits = [slice(0, 3), slice(3, 5), slice(5, 7)]  # as micro-batches (or data-parallel ranks)
    counts = [normalisers(mask[s]) for s in splits]
    num_tokens, num_seqs = sum(c[0] for c in counts), sum(c[1] for c in counts)
    total, grads, metrics = 0.0, [], []
    for s in splits:
        lp = logp[s].clone().requires_grad_()
        part_kw = {k: (v[s] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        loss, m = total_loss(lp, old[s], adv[s], mask[s], num_tokens=num_tokens, num_seqs=num_seqs, **part_kw)
        loss.backward()
        total, grads, metrics = total + loss.detach(), grads + [lp.grad], metrics + [m]
    torch.testing.assert_close(total, full.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(torch.cat(grads), full_lp.grad, rtol=1e-12, atol=1e-15)
    for k, v in full_metrics.items():
        reduce = torch.stack if k in MAX_METRICS else None
        parts = [m[k] for m in metrics]
        got = torch.stack(parts).amax() if reduce is not None else sum(parts)
        torch.testing.assert_close(got, v, rtol=1e-12, atol=1e-15, msg=k)


def test_tis_weights():
    trainer = torch.tensor([-1.0, -1.0, -3.0], dtype=F64, requires_grad=True)
    engine = torch.tensor([-2.0, -1.0, -1.0], dtype=F64)
    w = tis_weights(trainer, engine, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, math.exp(-2)], dtype=F64))  # e capped at 2
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        tis_weights(trainer, engine, cap=0.0)


def test_tis_weights_scale_the_per_token_loss():
    logp = torch.zeros(1, 3, dtype=F64, requires_grad=True)  # ratio 1: per-token loss is -A
    adv = torch.tensor([[1.0, -2.0, 3.0]], dtype=F64)
    w = torch.tensor([[0.5, 1.0, 2.0]], dtype=F64)
    loss, _ = policy_loss(logp, torch.zeros(1, 3, dtype=F64), adv, torch.ones(1, 3), tis_weights=w)
    assert loss.item() == pytest.approx((-0.5 + 2.0 - 6.0) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * w / 3)


def test_total_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)  # k1 per token: [0.5, -1.0]
    entropy = torch.tensor([[2.0, 4.0]], dtype=F64)
    mask = torch.ones(1, 2)
    loss, m = total_loss(logp, logp.detach(), torch.tensor([1.0], dtype=F64), mask, ref_logprobs=ref,
                         entropy=entropy, kl_beta=0.1, kl_estimator="k1", entropy_coef=0.01)
    # pg = -1 (ratio 1, A 1); kl = -0.25; entropy = 3
    assert loss.item() == pytest.approx(-1 + 0.1 * -0.25 - 0.01 * 3)
    assert {k: round(m[k].item(), 12) for k in ("loss", "pg_loss", "kl", "entropy")} == {
        "loss": -1.055, "pg_loss": -1.0, "kl": -0.25, "entropy": 3.0}
    assert {"clip_frac_low", "clip_frac_high", "clip_frac_dual", "ratio_mean", "ratio_max"} <= m.keys()
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.full((1, 2), (-1 + 0.1) / 2, dtype=F64))


def test_total_loss_reports_but_does_not_add_zero_weighted_terms():
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64)
    ref, ent, mask, adv = logp - 1, torch.ones(1, 2, dtype=F64), torch.ones(1, 2), torch.tensor([1.0], dtype=F64)
    loss, m = total_loss(logp, logp, adv, mask, ref_logprobs=ref, entropy=ent)
    assert loss.item() == pytest.approx(-1.0) and m["kl"].item() > 0 and m["entropy"].item() == 1.0
    _, m = total_loss(logp, logp, adv, mask)
    assert "kl" not in m and "entropy" not in m
    with pytest.raises(ValueError, match="ref_logprobs"):
        total_loss(logp, logp, adv, mask, kl_beta=0.1)
    with pytest.raises(ValueError, match="entropy"):
        total_loss(logp, logp, adv, mask, entropy_coef=0.1)
