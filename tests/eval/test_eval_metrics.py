"""pass@k against exact enumeration, its edge cases and large n; majority@k by hand."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from megatron_prorl.eval import majority_at_k, pass_at_k


def enumerated(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (c correct) holding at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(enumerated(n, c, k)), rel=1e-12, abs=1e-15)


def test_edge_cases():
    assert pass_at_k(16, 0, 1) == 0.0 and pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 16, 1) == 1.0 and pass_at_k(16, 16, 16) == 1.0
    assert pass_at_k(16, 1, 16) == 1.0  # k = n: any correct sample is in the only subset
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16, rel=1e-15)
    with pytest.raises(ValueError, match="k=17 > n=16 samples"):
        pass_at_k(16, 3, 17)
    with pytest.raises(ValueError, match="c=17 correct out of n=16"):
        pass_at_k(16, 17, 1)
    with pytest.raises(ValueError, match="k=0"):
        pass_at_k(16, 3, 0)
    with pytest.raises(TypeError, match="n=16.0 must be an int"):
        pass_at_k(16.0, 3, 1)


@pytest.mark.parametrize("n,c,k", [(256, 1, 128), (256, 3, 1), (5000, 1, 1), (5000, 2, 4096), (4000, 30, 64),
                                   (3000, 2999, 1500)])
def test_stable_for_large_n(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_tiny_probabilities_keep_relative_precision():
    # c=1, k=1 of 10**5: 1e-5 exactly; a naive 1 - ratio loses digits here
    assert pass_at_k(100_000, 1, 1) == pytest.approx(1e-5, rel=1e-12)


def test_majority_at_k():
    answers = ["4", "5", "5", "4", None, "4", "7", "7"]
    correct = [True, False, False, True, False, True, False, False]
    # one block of 8: correct (3 votes) beats "5" and "7" (2 each)
    assert majority_at_k(answers, correct, 8) == 1.0
    # blocks of 4: [4,5,5,4] tie correct/5 -> 1/2; [None,4,7,7] -> 7 wins -> 0
    assert majority_at_k(answers, correct, 4) == pytest.approx(0.25)
    # k = 1: each block is one sample; an unanswered sample scores 0
    assert majority_at_k(answers, correct, 1) == pytest.approx(3 / 8)
    # correct answers in different spellings form one class
    assert majority_at_k(["1/2", "0.5", "3", None], [True, True, False, False], 4) == 1.0
    assert majority_at_k([None, None], [False, False], 2) == 0.0
    with pytest.raises(ValueError, match="k=3 with n=2"):
        majority_at_k(["1", "2"], [True, False], 3)
