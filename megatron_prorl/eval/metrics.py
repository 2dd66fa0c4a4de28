"""Evaluation metrics over the n sampled responses of one problem (pure functions).

- :func:`pass_at_k`: the unbiased estimator of Chen et al. 2021 (openai/human-eval,
  ``human_eval/evaluation.py``, ``estimate_pass_at_k``): with n samples of which c are correct,
  pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i). It is computed in log
  space, ``-expm1(sum(log1p(-k/i)))``: no binomial overflows for n in the thousands and full
  relative precision when pass@k is tiny.
- :func:`majority_at_k`: majority voting (self-consistency) over k samples: the most common
  answer wins; correct answers form one class (all equal the reference), wrong ones are grouped
  by their extracted answer text, responses with no answer do not vote, and a tie among the top
  classes counts as 1 / (number of tied classes) when the correct class is among them (the
  expected score of a random tie-break). With n > k samples it is the mean over the n // k
  disjoint blocks of k consecutive samples (sample order), so it is exact to recompute.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence


def _check_counts(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass_at_k: {name}={value!r} must be an int")
    if n < 1:
        raise ValueError(f"pass_at_k: n={n} samples: need at least one")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} correct out of n={n}: need 0 <= c <= n")
    if k < 1:
        raise ValueError(f"pass_at_k: k={k}: must be >= 1")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} > n={n} samples: pass@k needs at least k samples per problem")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (see the module docstring)."""
    _check_counts(n, c, k)
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return -math.expm1(math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1)))


def majority_at_k(answers: Sequence[Optional[str]], correct: Sequence[bool], k: int) -> float:
    """Majority vote accuracy over blocks of ``k`` samples (see the module docstring).

    ``answers[i]`` is sample i's extracted answer (None: it gave none), ``correct[i]`` whether
    it matched the reference."""
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"majority_at_k: {n} answers but {len(correct)} correctness flags")
    if not 1 <= k <= n:
        raise ValueError(f"majority_at_k: k={k} with n={n} samples: need 1 <= k <= n")
    blocks = n // k
    total = 0.0
    for b in range(blocks):
        votes = Counter(("correct",) if ok else ("wrong", a.strip())
                        for a, ok in zip(answers[b * k:(b + 1) * k], correct[b * k:(b + 1) * k])
                        if ok or a is not None)
        if not votes:
            continue
        top = max(votes.values())
        winners = [cls for cls, count in votes.items() if count == top]
        if ("correct",) in winners:
            total += 1.0 / len(winners)
    return total / blocks
