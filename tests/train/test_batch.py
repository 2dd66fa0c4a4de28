"""Forming micro-batches (pure): token budgets, first-fit-decreasing packing and its THD layout,
Karmarkar-Karp balance, the exchange format of data-parallel balancing, and the checks that
refuse a budget a stage's longest sequence would not fit."""

from __future__ import annotations

import itertools

import pytest
import torch

from megatron_prorl.config import ConfigError, load_config
from megatron_prorl.train.batch import (
    balanced_partition,
    flatten,
    from_sequences,
    padding_fraction,
    plan_micro_batches,
    round_up,
    sequence_work,
    unflatten,
    unpack,
)
from megatron_prorl.train.stages import resolve_stages

LENGTHS = [100, 3, 50, 50, 20, 8, 7, 1, 64, 33]


@pytest.mark.parametrize("pack", [False, True])
def test_every_row_once_within_the_budget_longest_first(pack):
    groups = plan_micro_batches(LENGTHS, 104, pack)
    assert sorted(i for g in groups for i in g) == list(range(len(LENGTHS)))
    for g in groups:
        cost = round_up(sum(LENGTHS[i] for i in g)) if pack else len(g) * round_up(max(LENGTHS[i] for i in g))
        assert cost <= 104
    assert groups[0][0] == 0  # the longest row opens the first micro-batch
    # Packed, first fit decreasing fills the 100-token row's gap with the 3- and 1-token rows,
    # and needs no more rows than the tokens do; padded, a micro-batch is a run of the sorted rows.
    if pack:
        assert groups[0] == [0, 1, 7] and len(groups) == -(-sum(LENGTHS) // 104)
    else:
        order = sorted(range(len(LENGTHS)), key=lambda i: -LENGTHS[i])
        assert [i for g in groups for i in g] == order


def test_a_sequence_longer_than_the_budget_is_refused():
    with pytest.raises(ValueError, match="a sequence of 100 tokens does not fit a micro-batch of 96 tokens"):
        plan_micro_batches(LENGTHS, 96, pack=True)


def test_balanced_partition_is_near_optimal_and_deterministic():
    work = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 31, 2]
    parts = balanced_partition(work, 3)
    assert sorted(i for p in parts for i in p) == list(range(len(work)))
    assert parts[0] == [10]  # heavier than a third of the total (84 / 3): alone, the optimum
    assert balanced_partition(work, 3) == parts
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        work = torch.randint(1, 100, (8,), generator=g).tolist()
        kk = max(sum(work[i] for i in p) for p in balanced_partition(work, 3))
        best = min(max(sum(w for w, a in zip(work, assign) if a == k) for k in range(3))
                   for assign in itertools.product(range(3), repeat=len(work)))
        loads = [0, 0, 0]  # greedy: the heaviest item next to the lightest part
        for w in sorted(work, reverse=True):
            loads[loads.index(min(loads))] += w
        assert best <= kk <= min(max(loads), 1.1 * best), (work, kk, best, loads)
    with pytest.raises(ValueError):
        balanced_partition([1, 2], 3)


def test_attention_makes_long_sequences_weigh_more_than_their_tokens():
    w = sequence_work([1000, 500, 500], params_per_token=1000, attention_width=4)
    assert w[0] > w[1] + w[2]  # same tokens, but the L^2 term doubles per doubling
    assert sequence_work([8], 10, 0) == [80]


def _batch():
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [1] * 3]
    responses = [[10] * 5, [], [11] * 20, [12] * 2]
    return from_sequences(prompts, responses, [1.0, -1.0, 0.5, 0.2], engine_logprobs=[[-0.5] * 5, [], [-1.0] * 20,
                                                                                          [-2.0] * 2])


def test_packed_rows_restart_positions_and_unpack_to_the_row_layout():
    batch = _batch()
    mbs = batch.budget_micro_batches(32, pack=True)
    assert len(mbs) == 2 and all(mb["input_ids"].shape[0] == 1 for mb in mbs)
    first = mbs[0]  # the 24-token row (index 2) and the 8-token row (index 0): 32 tokens, no padding
    assert first["rows"].tolist() == [2, 0] and first["cu_seqlens"].tolist() == [0, 24, 32]
    assert first["position_ids"][0].tolist() == list(range(24)) + list(range(8))
    second = mbs[1]  # 5 + 2 tokens, then a padding sequence of its own to reach 8
    assert second["cu_seqlens"].tolist() == [0, 5, 7, 8] and second["max_seqlen"] == 5
    assert second["input_ids"][0, -1] == 0
    for mb in mbs:
        # unpack_index takes each sequence's next-token positions out of the packed row.
        targets = unpack(mb["input_ids"][:, 1:], mb)
        mask = mb["loss_mask"].bool()
        assert torch.equal(targets[mask], batch.input_ids[mb["rows"], 1:1 + targets.shape[1]][mask])
        assert torch.equal(mb["loss_mask"], batch.loss_mask[mb["rows"], :targets.shape[1]])
    real = sum(batch.token_lengths())
    assert padding_fraction(mbs, real) == pytest.approx(1 - real / 40)


def test_budget_micro_batches_are_as_wide_as_their_longest_row():
    batch = _batch()
    mbs = batch.budget_micro_batches(24, pack=False)
    assert [mb["rows"].tolist() for mb in mbs] == [[2], [0, 3, 1]]
    assert [tuple(mb["input_ids"].shape) for mb in mbs] == [(1, 24), (3, 8)]
    assert mbs[1]["engine_logprobs"].shape == (3, 7)
    fixed = batch.micro_batches(3)
    assert [mb["rows"].tolist() for mb in fixed] == [[0, 1, 2], [3, -1, -1]]  # padding rows: -1
    assert padding_fraction(fixed, 39) == pytest.approx(1 - 39 / (6 * 24))


def test_flatten_then_unflatten_gives_the_rows_back():
    batch = _batch()
    batch.old_logprobs = torch.randn(batch.loss_mask.shape)
    flat = flatten(batch)
    assert flat["input_ids"].numel() == sum(batch.token_lengths())
    back = unflatten(flat, [2, 0])
    assert back.input_ids.shape == (2, 24) and back.lengths.tolist() == [24, 8]
    for name in ("input_ids", "loss_mask", "engine_logprobs", "old_logprobs", "advantages"):
        got, want = getattr(back, name), getattr(batch, name)[[2, 0]]
        if got.dim() == 2:
            for row, n in enumerate((24, 8)):
                w = n if name == "input_ids" else n - 1
                assert torch.equal(got[row, :w], want[row, :w]) and not got[row, w:].any()
        else:
            assert torch.equal(got, want)


def _config(*overrides):
    return load_config(None, ["trainer.stages=[{name: a, steps: 1}, {name: b, steps: 1, max_response_length: 1000}]",
                              "rollout.max_prompt_length=100", "rollout.max_response_length=500", *overrides])


def test_a_budget_below_a_stages_longest_sequence_is_refused():
    resolve_stages(_config("batch.max_tokens_per_micro_batch=1104"))
    with pytest.raises(ConfigError, match=r"batch.max_tokens_per_micro_batch=1096 is smaller than the longest "
                                          r"sequence trainer.stages\[1\] \('b'\) can produce: 1100 tokens"):
        resolve_stages(_config("batch.max_tokens_per_micro_batch=1096"))
    with pytest.raises(ConfigError, match="batch.max_tokens_per_logprob_micro_batch=600"):
        resolve_stages(_config("batch.max_tokens_per_logprob_micro_batch=600"))


@pytest.mark.parametrize("override, message", [
    ("batch.max_tokens_per_micro_batch=1100", "must be a positive multiple of 8"),
    ("batch.max_tokens_per_logprob_micro_batch=0", "must be a positive multiple of 8"),
    ("batch.pack_sequences=true", "batch.pack_sequences=true needs a token budget"),
    ("model.logprob_chunk_tokens=0", "model.logprob_chunk_tokens=0: must be >= 1"),
])
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _config(override)
