"""The paper's three regimes of how the reasoning boundary moves over training (ProRL section
4.2, Figure 4), as a numeric rule.

The paper describes them in words only: *diminish* (pass@1 improves while pass@k at large k
stays flat or drops, typically where the base model's pass@128 is already high), *plateau*
(gains early, little change between the later checkpoints) and *sustained* (pass@k at large k
keeps improving late in training). This module decides them from the pass@1 and pass@K
(K = the largest k evaluated) of one benchmark at checkpoints in training order, with one
threshold ``min_change`` (absolute, in [0, 1]) for "moved": see :func:`rule_text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

REGIMES = ("diminishing", "sustained", "plateau", "no change", "unclassified")
DEFAULT_MIN_CHANGE = 0.02


@dataclass(frozen=True)
class Regime:
    name: str  # one of REGIMES
    why: str  # the numbers that decided it


def rule_text(min_change: float = DEFAULT_MIN_CHANGE, k: str = "K") -> str:
    """The rule, as printed with every comparison."""
    m = f"{min_change:g}"
    return (f"Regimes (first matching rule wins; first = first checkpoint, last = last, "
            f"prev = the one before last; pass@{k} at the largest k evaluated; threshold {m}):\n"
            f"1. diminishing: pass@1 first->last >= +{m} and pass@{k} first->last <= -{m}\n"
            f"2. sustained: pass@{k} prev->last >= +{m} (with two checkpoints: first->last)\n"
            f"3. plateau (needs >= 3 checkpoints): pass@1 or pass@{k} first->prev >= +{m}, and both "
            f"change by less than {m} prev->last\n"
            f"4. no change: pass@1 and pass@{k} both change by less than {m} first->last\n"
            f"5. unclassified: anything else (e.g. pass@1 drops)")


def classify(pass1: Sequence[float], passk: Sequence[float], min_change: float = DEFAULT_MIN_CHANGE) -> Regime:
    """The regime of one benchmark from its pass@1 and pass@K at checkpoints in training order."""
    if len(pass1) != len(passk):
        raise ValueError(f"classify: {len(pass1)} pass@1 values but {len(passk)} pass@k values")
    if len(pass1) < 2:
        raise ValueError(f"classify: needs at least two checkpoints, got {len(pass1)}")
    if min_change < 0:
        raise ValueError(f"classify: min_change={min_change} must be >= 0")
    d1, dk = pass1[-1] - pass1[0], passk[-1] - passk[0]
    late1, latek = pass1[-1] - pass1[-2], passk[-1] - passk[-2]
    why = f"pass@1 {d1:+.3f}, pass@k {dk:+.3f} first->last; {late1:+.3f}, {latek:+.3f} prev->last"
    if d1 >= min_change and dk <= -min_change:
        return Regime("diminishing", why)
    if latek >= min_change:
        return Regime("sustained", why)
    if len(pass1) >= 3:
        early = max(pass1[-2] - pass1[0], passk[-2] - passk[0])
        if early >= min_change and abs(late1) < min_change and abs(latek) < min_change:
            return Regime("plateau", f"{why}; early gain {early:+.3f}")
    if abs(d1) < min_change and abs(dk) < min_change:
        return Regime("no change", why)
    return Regime("unclassified", why)
