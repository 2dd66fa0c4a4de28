"""Bounded groups of named tensors: weight-sync buckets and safetensors shard files.

A weight sync streams ``(hf_name, tensor)`` pairs; grouping them into buckets of at most a
given size bounds the extra memory a transfer needs (one bucket in flight) while keeping the
number of calls small. The converter's safetensors writer groups tensors into files the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Hashable, Sequence

if TYPE_CHECKING:
    import torch

# Named tensors sent together; a full weight sync is an iterable of buckets.
Bucket = list[tuple[str, "torch.Tensor"]]


def nbytes(shape: Sequence[int], dtype: "torch.dtype") -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    return math.prod(shape) * dtype.itemsize


def plan_buckets(sizes: Sequence[tuple[Hashable, int]], max_bytes: int) -> list[list]:
    """Names, in order, grouped into buckets of at most ``max_bytes`` bytes (only a single
    oversized tensor exceeds it; an empty one never opens a bucket). Empty input: no bucket."""
    if max_bytes <= 0:
        raise ValueError(f"bucket size {max_bytes} bytes: must be > 0")
    buckets: list[list] = []
    size = 0
    for name, n in sizes:
        if not buckets or (n and size + n > max_bytes):
            buckets.append([])
            size = 0
        buckets[-1].append(name)
        size += n
    return buckets
