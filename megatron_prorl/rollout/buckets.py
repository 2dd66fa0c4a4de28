"""Bounded-size grouping of named tensors for streaming a weight sync.

The trainer side produces ``(hf_name, tensor)`` pairs one at a time; grouping them into buckets
of at most ``bucket_bytes`` bounds the extra memory a sync needs (one bucket in flight) while
keeping the number of engine calls small. A tensor larger than a bucket travels alone.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Iterator, Sequence

import torch

from megatron_prorl.rollout.base import Bucket


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def bucket_bytes(bucket: Bucket) -> int:
    return sum(tensor_bytes(t) for _, t in bucket)


def plan_buckets(sizes: Sequence[tuple[Hashable, int]], max_bytes: int) -> list[list]:
    """Names, in order, grouped into buckets of at most ``max_bytes`` bytes (only a single
    oversized tensor exceeds it; an empty one never opens a bucket). Empty input: no bucket."""
    buckets: list[list] = []
    size = 0
    for name, nbytes in sizes:
        if not buckets or (nbytes and size + nbytes > max_bytes):
            buckets.append([])
            size = 0
        buckets[-1].append(name)
        size += nbytes
    return buckets


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[Bucket]:
    """Consecutive (name, tensor) pairs, in order, grouped as :func:`plan_buckets` does."""
    if max_bytes <= 0:
        raise ValueError(f"bucket size {max_bytes} bytes: must be > 0")
    pairs = list(named_tensors)
    for indices in plan_buckets([(i, tensor_bytes(t)) for i, (_, t) in enumerate(pairs)], max_bytes):
        yield [pairs[i] for i in indices]
