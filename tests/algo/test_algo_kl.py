"""KL estimators: hand values, non-negativity of k3, clamping (verl's by default) and gradients."""

import math

import pytest
import torch

from megatron_prorl.algo import kl_penalty, total_loss
from megatron_prorl.registry import UnknownNameError

F64 = torch.float64
LOGP = torch.tensor([-1.0, -2.0, -0.5], dtype=F64)
REF = torch.tensor([-1.5, -1.0, -0.5], dtype=F64)  # ref - logp = [-0.5, 1, 0]


@pytest.mark.parametrize("kind,expected", [
    ("k1", [0.5, -1.0, 0.0]),
    ("k2", [0.125, 0.5, 0.0]),
    ("k3", [math.exp(-0.5) + 0.5 - 1, math.e - 2, 0.0]),
])
def test_hand_values(kind, expected):
    torch.testing.assert_close(kl_penalty(LOGP, REF, kind), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


def test_default_is_k3_and_nonnegative():
    torch.testing.assert_close(kl_penalty(LOGP, REF), kl_penalty(LOGP, REF, "k3"))
    g = torch.Generator().manual_seed(0)
    logp, ref = (torch.randn(1000, generator=g, dtype=F64) * 5 for _ in range(2))
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()


def test_k3_precise_for_tiny_differences():
    d = torch.tensor([1e-9, -1e-9], dtype=F64)
    torch.testing.assert_close(kl_penalty(torch.zeros(2, dtype=F64), d, "k3"), d**2 / 2, rtol=1e-6, atol=0)


def test_k3_gradient():
    logp = LOGP.clone().requires_grad_()
    kl_penalty(logp, REF, "k3").sum().backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp)
    torch.testing.assert_close(logp.grad, 1 - torch.exp(REF - LOGP))


def test_clamp_bounds_values_and_stops_gradient():
    logp = LOGP.clone().requires_grad_()
    kl = kl_penalty(logp, REF, "k1", clamp=0.7)
    torch.testing.assert_close(kl.detach(), torch.tensor([0.5, -0.7, 0.0], dtype=F64))
    kl.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="clamp"):
        kl_penalty(LOGP, REF, "k2", clamp=0.0)


def test_bad_input():
    with pytest.raises(UnknownNameError, match="k1, k2, k3"):
        kl_penalty(LOGP, REF, "low_var_kl")
    with pytest.raises(ValueError, match="shape"):
        kl_penalty(LOGP, REF[:2])


def test_default_clamp_is_verls_ten():
    logp, ref = torch.tensor([-10.0, 0.0], dtype=F64), torch.tensor([0.0, -12.0], dtype=F64)
    # d = ref - logp = [10, -12]: k3 = e^10 - 11 ~ 22015 and e^-12 + 11, both over 10
    torch.testing.assert_close(kl_penalty(logp, ref), torch.tensor([10.0, 10.0], dtype=F64))
    torch.testing.assert_close(kl_penalty(logp, ref, clamp=None),
                               torch.tensor([math.exp(10) - 11, math.exp(-12) + 11], dtype=F64), rtol=1e-12, atol=0)
    # The clamp applies to the chosen estimator: k2 as ProRL v2 ran it; None gives verl's unclamped k2.
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([10.0, 10.0], dtype=F64))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2", clamp=None), torch.tensor([50.0, 72.0], dtype=F64))
    mask = torch.ones(1, 2)
    _, m = total_loss(logp[None], logp[None], torch.zeros(1, dtype=F64), mask, ref_logprobs=ref[None])
    assert m["kl"].item() == 10.0  # total_loss defaults to the same clamp


def test_k3_matches_verl():
    """verl's kl_penalty "low_var_kl" (core_algos.py at 26b5d6b), transcribed, on random log-probs."""
    g = torch.Generator().manual_seed(3)
    logp, ref = (-torch.rand(4096, generator=g, dtype=F64) * 40 for _ in range(2))  # |d| up to 40
    kl = torch.clamp(ref - logp, min=-20, max=20)
    verl = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), verl, rtol=1e-12, atol=1e-12)


def test_k3_gradient_stays_finite_where_clamped():
    # d = +-100 overflows exp in fp32; the clamped estimate must still give a zero, not NaN, gradient.
    logp = torch.tensor([-100.0, 0.0, -1.0], requires_grad=True)
    ref = torch.tensor([0.0, -100.0, -1.5])
    kl = kl_penalty(logp, ref, "k3")
    kl.sum().backward()
    assert kl[:2].tolist() == [10.0, 10.0]
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 0.0, 1 - math.exp(-0.5)]))
