"""Dynamic sampling: which groups are kept, and filling a batch over sampling rounds."""

import pytest
import torch

from megatron_prorl.algo import dynamic_sampling_mask, fill_batch, grpo_advantages, response_indices


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


def test_fill_takes_first_kept_groups_in_round_order():
    masks = [torch.tensor([True, False, True, False]), torch.tensor([False, False, False]),
             torch.tensor([True, True, True])]
    fill = fill_batch(masks, 4)
    assert fill.selected.tolist() == [0, 2, 7, 8]
    assert (fill.num_kept, fill.num_dropped, fill.full) == (5, 5, True)
    short = fill_batch(masks[:2], 4)
    assert short.selected.tolist() == [0, 2]
    assert (short.num_kept, short.num_dropped, short.full) == (2, 5, False)


def test_fill_bad_input():
    with pytest.raises(ValueError, match="target"):
        fill_batch([torch.tensor([True])], 0)
    with pytest.raises(ValueError, match="at least one"):
        fill_batch([], 2)
    with pytest.raises(ValueError, match="round 1"):
        fill_batch([torch.tensor([True]), torch.ones(2, 2, dtype=torch.bool)], 2)


def test_response_indices():
    assert response_indices(torch.tensor([1, 3]), 4).tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    assert response_indices(torch.tensor([], dtype=torch.long), 4).tolist() == []
