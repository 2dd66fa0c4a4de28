"""Dynamic sampling: which groups are kept, and the refill loop the trainer runs."""

import pytest
import torch

from megatron_prorl.algo import dynamic_sampling_mask, fill, grpo_advantages


def test_mask_drops_all_correct_all_wrong_and_constant_groups():
    r = torch.tensor([1.0, 1, 1, 1,  0, 0, 0, 0,  1, 0, 1, 1,  0.5, 0.5, 0.5, 0.5,  0.2, 0.3, 0.2, 0.2])
    assert dynamic_sampling_mask(r, 4).tolist() == [False, False, True, False, True]
    assert dynamic_sampling_mask(r.bool(), 4).tolist()[:3] == [False, False, True]


def test_tolerance():
    r = torch.tensor([0.5, 0.5 + 1e-9, 0.5, 0.5 + 1e-6], dtype=torch.float64)
    assert dynamic_sampling_mask(r, 2).tolist() == [False, True]
    assert dynamic_sampling_mask(r, 2, tol=1e-5).tolist() == [False, False]
    # identical non-representable values in fp32 are all-equal whatever the dtype
    assert dynamic_sampling_mask(torch.full((16,), 0.3), 16).tolist() == [False]


def test_kept_groups_are_exactly_those_with_nonzero_grpo_advantages():
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(64 * 4, generator=g) < 0.3).float()
    keep = dynamic_sampling_mask(r, 4)
    assert 0 < keep.sum() < 64
    assert torch.equal(keep, grpo_advantages(r, 4).view(64, 4).ne(0).any(1))


# A group is (name, rewards); rounds hand out prepared groups.
def rounds_of(*rounds):
    calls = []

    def generate(r, missing):
        calls.append((r, missing))
        return rounds[r] if missing else []

    return generate, calls


INFORMATIVE = [1.0, 0.0]
FLAT = [1.0, 1.0]


def test_fill_takes_first_kept_groups_in_round_order_and_drops_the_surplus():
    generate, calls = rounds_of([("a", INFORMATIVE), ("b", FLAT), ("c", INFORMATIVE)],
                                [("d", FLAT), ("e", FLAT)],
                                [("f", INFORMATIVE), ("g", INFORMATIVE), ("h", INFORMATIVE)])
    out = fill(generate, lambda g: g[1], 4, max_rounds=5)
    assert [g[0] for g in out.kept] == ["a", "c", "f", "g"]
    assert (out.rounds, out.dropped) == (3, 3)
    assert [g[0] for g in out.first_round] == ["a", "b", "c"]
    assert calls == [(0, 4), (1, 2), (2, 2)]


def test_fill_stops_at_max_rounds_short():
    generate, calls = rounds_of([("a", FLAT)], [("b", INFORMATIVE)], [("c", INFORMATIVE)])
    out = fill(generate, lambda g: g[1], 3, max_rounds=2)
    assert [g[0] for g in out.kept] == ["b"] and out.rounds == 2 and out.dropped == 1


def test_fill_keeps_calling_while_another_participant_is_short():
    """A full caller still takes part in every round another replica needs (lockstep draws)."""
    generate, calls = rounds_of([("a", INFORMATIVE)], [("x", INFORMATIVE)], [("y", INFORMATIVE)])
    others_short = iter([True, False])
    out = fill(generate, lambda g: g[1], 1, max_rounds=4, anyone_short=lambda short: short or next(others_short))
    assert [g[0] for g in out.kept] == ["a"]
    assert calls == [(0, 1), (1, 0)] and out.rounds == 2


def test_fill_disabled_takes_one_round_whole():
    generate, calls = rounds_of([("a", FLAT), ("b", INFORMATIVE)], [("c", INFORMATIVE)])
    out = fill(generate, lambda g: g[1], 2, max_rounds=4, enabled=False,
               anyone_short=lambda short: pytest.fail("no collective without dynamic sampling"))
    assert [g[0] for g in out.kept] == ["a", "b"] and out.rounds == 1 and out.dropped == 0


def test_fill_bad_input():
    with pytest.raises(ValueError, match="target=0"):
        fill(lambda r, m: [], lambda g: g, 0, max_rounds=1)
    with pytest.raises(ValueError, match="max_rounds=0"):
        fill(lambda r, m: [], lambda g: g, 1, max_rounds=0)
