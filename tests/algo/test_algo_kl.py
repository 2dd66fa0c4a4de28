"""KL estimators: hand values, non-negativity of k3, clamping and gradients."""

import math

import pytest
import torch

from megatron_prorl.algo import kl_penalty
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
