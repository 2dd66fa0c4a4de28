"""Which data-parallel replica generates and trains which prompt group: pure functions of the
step's sizes, defined so that the training step itself does not depend on the layout.

A step keeps ``S`` groups (``batch.prompts_per_step`` when dynamic sampling fills the batch), in
the order dynamic sampling selected them. Group ``k`` belongs to mini-batch ``k % U`` (``U``
optimizer updates per step), at place ``k // U`` in it; each mini-batch's places are shared
among the ``D`` replicas in contiguous, near-equal pieces (the larger first). The loss of a
mini-batch is normalised by its token and sequence counts over all replicas and the gradients
are summed over them, so each update sees the same groups, whatever ``D`` is: only float
summation order changes with the layout.

Generation follows the same rule for a full step: replica ``d`` generates the prompts at places
``shares(P, D)[d]`` of every mini-batch, which is the contiguous block :func:`generation_block` of
each round's prompts. When every group of the first round is kept, no group moves between
replicas; groups that dynamic sampling takes from later rounds, or that a short step moves into
other mini-batches, go to the replica that trains them.
"""

from __future__ import annotations


def shares(total: int, parts: int) -> list[range]:
    """``range(total)`` in ``parts`` contiguous pieces whose sizes differ by at most one, the
    larger first (``torch.tensor_split``'s rule)."""
    size, extra = divmod(total, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def num_updates(groups: int, updates: int, dp: int) -> int:
    """Optimizer updates a step with ``groups`` kept groups makes: ``updates``, fewer when the
    groups cannot give every replica a share of every mini-batch (a step short of informative
    groups), 0 (the step is skipped) with fewer groups than replicas."""
    return min(updates, groups // dp)


def assign(groups: int, updates: int, dp: int) -> list[list[list[int]]]:
    """``[replica][update]``: the groups (by place in the selection) each replica trains in each
    update; ``updates`` as :func:`num_updates` gives it (every list non-empty)."""
    out = [[[] for _ in range(updates)] for _ in range(dp)]
    for m in range(updates):
        members = list(range(m, groups, updates))
        for d, piece in enumerate(shares(len(members), dp)):
            out[d][m] = [members[i] for i in piece]
    return out


def generation_block(prompts: int, updates: int, dp: int, replica: int) -> range:
    """The prompts of a round that ``replica`` generates: in a full step it trains exactly these
    (``assign(prompts, updates, dp)[replica]``, which is this block), so nothing moves."""
    piece = shares(prompts // updates, dp)[replica]
    return range(updates * piece.start, updates * piece.stop)
