"""DAPO dynamic sampling: keep only prompts whose responses disagree, sample again until full.

A group whose rewards are all equal (every response right, every response wrong, or the same
continuous score) has GRPO advantage 0 on every token, so it only dilutes the batch. "All equal"
means a reward range <= ``ZERO_VARIANCE_TOL`` (1e-8), the same test GRPO uses to zero a group.

:func:`fill` is the loop the trainer runs: rounds of "generate and score" until ``target``
informative groups are kept (earlier rounds first, as DAPO does; the surplus of the last round
is discarded) or ``max_rounds`` have run. It knows nothing of processes: the caller's
``anyone_short`` decides whether another round is needed (the trainer asks every replica).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

import torch
from torch import Tensor

from megatron_prorl.algo.utils import ZERO_VARIANCE_TOL, as_groups, group_has_variance

G = TypeVar("G")


def dynamic_sampling_mask(rewards: Tensor, group_size: int, tol: float = ZERO_VARIANCE_TOL) -> Tensor:
    """Bool ``[n_prompts]``: True for groups whose rewards are not all equal (kept)."""
    return group_has_variance(as_groups(rewards, group_size), tol)


@dataclass
class Filled(Generic[G]):
    kept: list[G]  # at most target groups, in the order they were sampled
    rounds: int
    dropped: int  # zero-variance groups over all rounds
    first_round: list[G] = field(default_factory=list)  # every group of round 0 (the policy's own statistics)


def fill(generate_round: Callable[[int, int], Sequence[G]], rewards_of: Callable[[G], Sequence[float]],
         target: int, *, max_rounds: int, enabled: bool = True,
         anyone_short: Callable[[bool], bool] = lambda short: short) -> Filled[G]:
    """Collect ``target`` informative groups.

    ``generate_round(round, missing)`` samples and scores one round, given how many groups are
    still missing (0 when this caller is full: it may then return nothing, but is still called
    each round, so callers that draw prompts in lockstep stay in step). ``anyone_short(short)``
    says whether any participant still needs groups (called between rounds, never after the
    last). With ``enabled=False`` one round is taken whole.
    """
    if target < 1 or max_rounds < 1:
        raise ValueError(f"target={target}, max_rounds={max_rounds}: both must be >= 1")
    out: Filled[G] = Filled([], 0, 0)
    rounds = max_rounds if enabled else 1
    for r in range(rounds):
        groups = list(generate_round(r, max(target - len(out.kept), 0)))
        if r == 0:
            out.first_round = groups
        if groups and enabled:
            rewards = torch.tensor([x for g in groups for x in rewards_of(g)], dtype=torch.float64)
            keep = dynamic_sampling_mask(rewards, len(rewards_of(groups[0]))).tolist()
        else:
            keep = [True] * len(groups)
        out.kept += [g for g, k in zip(groups, keep) if k]
        out.dropped += keep.count(False)
        out.rounds = r + 1
        if r + 1 == rounds or not anyone_short(len(out.kept) < target):
            break
    out.kept = out.kept[:target]
    return out
