"""Which replica generates and trains which group: the same mini-batches at every DP size."""

from __future__ import annotations

import pytest

from megatron_prorl.train.placement import assign, generation_block, num_updates, shares


def test_shares_are_contiguous_and_near_equal_larger_first():
    assert shares(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert shares(4, 4) == [range(i, i + 1) for i in range(4)]
    assert shares(2, 3) == [range(0, 1), range(1, 2), range(2, 2)]


@pytest.mark.parametrize("groups, updates", [(8, 2), (12, 3), (256, 4), (7, 2), (5, 1)])
def test_every_update_holds_the_same_groups_whatever_the_dp_size(groups, updates):
    """The union over replicas of each update's groups is fixed by the step, not the layout;
    each replica has some of every update, and every group is trained exactly once."""
    reference = None
    for dp in range(1, groups // updates + 1):
        plan = assign(groups, updates, dp)
        per_update = [sorted(k for replica in plan for k in replica[m]) for m in range(updates)]
        assert per_update == [list(range(m, groups, updates)) for m in range(updates)]
        assert all(update for replica in plan for update in replica)
        assert sorted(k for replica in plan for update in replica for k in update) == list(range(groups))
        reference = reference or per_update
        assert per_update == reference


@pytest.mark.parametrize("prompts, updates, dp", [(8, 2, 1), (8, 2, 2), (8, 2, 4), (256, 4, 12), (12, 3, 4)])
def test_a_full_step_trains_each_group_where_it_was_generated(prompts, updates, dp):
    blocks = [generation_block(prompts, updates, dp, d) for d in range(dp)]
    assert [k for b in blocks for k in b] == list(range(prompts))  # contiguous, in order, all
    plan = assign(prompts, updates, dp)
    for d in range(dp):
        assert sorted(k for update in plan[d] for k in update) == list(blocks[d])


def test_a_short_step_makes_fewer_updates_and_none_below_one_group_per_replica():
    assert num_updates(8, 2, 2) == 2
    assert num_updates(3, 2, 2) == 1  # every replica still gets a share of the one update
    assert num_updates(1, 2, 2) == 0 and num_updates(0, 2, 1) == 0
    assert num_updates(1, 2, 1) == 1
