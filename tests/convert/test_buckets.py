"""Bucket planning: weight-sync buckets and safetensors shard files share one grouping rule."""

import pytest

from checkpoint_convert.buckets import plan_buckets


def test_buckets_keep_order_bound_their_size_and_isolate_big_tensors():
    sizes = [("a", 40), ("b", 40), ("c", 30), ("big", 200), ("e", 10), ("f", 10), ("g", 100)]
    assert plan_buckets(sizes, 100) == [["a", "b"], ["c"], ["big"], ["e", "f"], ["g"]]
    assert plan_buckets(sizes, 10**9) == [["a", "b", "c", "big", "e", "f", "g"]]


def test_empty_tensors_never_open_a_bucket_and_no_input_gives_none():
    assert plan_buckets([("a", 100), ("empty", 0), ("b", 1)], 100) == [["a", "empty"], ["b"]]
    assert plan_buckets([], 10) == []


def test_bucket_size_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        plan_buckets([("a", 1)], 0)
