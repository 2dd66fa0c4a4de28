"""DAPO dynamic sampling: keep only prompts whose responses disagree, sample again until full.

A group whose rewards are all equal (every response right, every response wrong, or the same
continuous score) has GRPO advantage 0 on every token, so it only dilutes the batch. "All equal"
means a reward range <= ``ZERO_VARIANCE_TOL`` (1e-8), the same test GRPO uses to zero a group.

:func:`fill` is the loop the trainer runs: rounds of "generate and score" until ``target``
informative groups are kept (earlier rounds first, as DAPO does; the surplus of the last round
is discarded) or ``max_rounds`` have run. A round is ``target`` prompts, shared among
participants (data-parallel replicas), each generating a contiguous piece; which groups are kept
is decided over the whole round, in prompt order, so the kept groups (and the number of rounds)
do not depend on how many participants share the work. It knows nothing of processes: the
caller's ``gather`` puts the participants' keep flags together.
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
    selected: list[tuple[int, int]]  # (round, prompt index in the round) of the kept groups, in order
    kept: dict[int, G]  # this participant's kept groups, by their place in ``selected``
    rounds: int
    dropped: int  # zero-variance groups over all rounds and participants
    first_round: list[G] = field(default_factory=list)  # this participant's groups of round 0 (the policy's own statistics)


def fill(generate_round: Callable[[int], Sequence[G]], rewards_of: Callable[[G], Sequence[float]],
         target: int, *, max_rounds: int, enabled: bool = True, offset: int = 0,
         gather: Callable[[list[bool]], Sequence[bool]] = lambda flags: flags) -> Filled[G]:
    """Collect the first ``target`` informative groups of the rounds over all participants.

    Round r has ``target`` prompts; ``generate_round(r)`` samples and scores this participant's
    piece of it, the prompts at ``offset``, ``offset + 1``, ... ``gather(flags)`` returns the
    round's keep flags of every participant, in prompt order (``target`` of them; alone, a
    participant's own are all there are); it is called once per round, on every participant.
    With ``enabled=False`` one round is taken whole (and ``gather`` is not called).
    """
    if target < 1 or max_rounds < 1:
        raise ValueError(f"target={target}, max_rounds={max_rounds}: both must be >= 1")
    out: Filled[G] = Filled([], {}, 0, 0)
    for r in range(max_rounds if enabled else 1):
        groups = list(generate_round(r))
        if r == 0:
            out.first_round = groups
        if enabled:
            keep = []
            if groups:
                rewards = torch.tensor([x for g in groups for x in rewards_of(g)], dtype=torch.float64)
                keep = dynamic_sampling_mask(rewards, len(rewards_of(groups[0]))).tolist()
            flags = list(gather(keep))
        else:
            flags = [True] * target
        mine = dict(enumerate(groups, start=offset))
        for j, informative in enumerate(flags):
            if not informative:
                out.dropped += 1
            elif len(out.selected) < target:
                if j in mine:
                    out.kept[len(out.selected)] = mine[j]
                out.selected.append((r, j))
        out.rounds = r + 1
        if len(out.selected) == target:
            break
    return out
