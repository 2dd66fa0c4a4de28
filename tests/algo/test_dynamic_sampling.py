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


# A group is (name, rewards); rounds hand out prepared groups (each round: the target's count).
INFORMATIVE = [1.0, 0.0]
FLAT = [1.0, 1.0]


def rounds_of(*rounds, piece=slice(None)):
    calls = []

    def generate(r):
        calls.append(r)
        return rounds[r][piece]

    return generate, calls


def names(out):
    return [out.kept[k][0] for k in sorted(out.kept)]


def test_fill_takes_first_kept_groups_in_round_order_and_drops_the_surplus():
    generate, calls = rounds_of([("a", INFORMATIVE), ("b", FLAT), ("c", INFORMATIVE), ("d", FLAT)],
                                [("e", FLAT), ("f", FLAT), ("g", INFORMATIVE), ("h", FLAT)],
                                [("i", INFORMATIVE), ("j", INFORMATIVE), ("k", INFORMATIVE), ("l", FLAT)])
    out = fill(generate, lambda g: g[1], 4, max_rounds=5)
    assert names(out) == ["a", "c", "g", "i"] and out.selected == [(0, 0), (0, 2), (1, 2), (2, 0)]
    assert (out.rounds, out.dropped) == (3, 6)  # b d e f h l; the informative surplus j k is not
    assert [g[0] for g in out.first_round] == ["a", "b", "c", "d"]
    assert calls == [0, 1, 2]


def test_fill_stops_at_max_rounds_short():
    generate, _ = rounds_of([("a", FLAT), ("b", FLAT)], [("c", INFORMATIVE), ("d", FLAT)], [("e", INFORMATIVE)] * 2)
    out = fill(generate, lambda g: g[1], 2, max_rounds=2)
    assert names(out) == ["c"] and out.selected == [(1, 0)] and out.rounds == 2 and out.dropped == 3


def test_participants_sharing_the_rounds_keep_what_one_alone_keeps():
    """Two replicas, each generating half of every round (its own prompts), select the same
    groups as one replica generating all of them, and each holds its own of them."""
    rounds = ([("a", FLAT), ("b", INFORMATIVE), ("c", FLAT), ("d", FLAT)],
              [("e", INFORMATIVE), ("f", INFORMATIVE), ("g", INFORMATIVE), ("h", INFORMATIVE)])
    alone = fill(rounds_of(*rounds)[0], lambda g: g[1], 4, max_rounds=3)
    whole = [[g[1] == INFORMATIVE for g in r] for r in rounds]  # what the trainer's all-reduce returns

    def participant(offset):
        seen = []

        def gather(mine):
            seen.append(mine)
            return whole[len(seen) - 1]

        out = fill(rounds_of(*rounds, piece=slice(offset, offset + 2))[0], lambda g: g[1], 4, max_rounds=3,
                   offset=offset, gather=gather)
        assert seen == [w[offset:offset + 2] for w in whole[:out.rounds]]
        return out

    first, second = participant(0), participant(2)
    assert alone.selected == first.selected == second.selected == [(0, 1), (1, 0), (1, 1), (1, 2)]
    assert (alone.rounds, alone.dropped) == (first.rounds, first.dropped) == (second.rounds, second.dropped) == (2, 3)
    assert names(alone) == ["b", "e", "f", "g"]
    assert first.kept == {0: ("b", INFORMATIVE), 1: ("e", INFORMATIVE), 2: ("f", INFORMATIVE)}
    assert second.kept == {3: ("g", INFORMATIVE)}


def test_fill_disabled_takes_one_round_whole():
    generate, calls = rounds_of([("a", FLAT), ("b", INFORMATIVE)], [("c", INFORMATIVE)] * 2)
    out = fill(generate, lambda g: g[1], 2, max_rounds=4, enabled=False,
               gather=lambda flags: pytest.fail("no collective without dynamic sampling"))
    assert names(out) == ["a", "b"] and out.rounds == 1 and out.dropped == 0 and calls == [0]


def test_fill_bad_input():
    with pytest.raises(ValueError, match="target=0"):
        fill(lambda r: [], lambda g: g, 0, max_rounds=1)
    with pytest.raises(ValueError, match="max_rounds=0"):
        fill(lambda r: [], lambda g: g, 1, max_rounds=0)
