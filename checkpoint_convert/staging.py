"""Tensors laid out in byte buffers, and reusable staging memory for the offline conversions.

:func:`carve` places tensors one after another in a byte buffer (each 64-byte aligned); the
weight sync's shared-memory buckets and the :class:`Staging` buffers are laid out with it.

Reading gigabytes into fresh tensors costs more in page faults than in copying: each new
large allocation is fresh anonymous memory, faulted in 4 KiB at a time (measured here: 0.7-1.3
GB/s into fresh buffers, 4 GB/s into a reused one, 6.7 GB/s into a reused one backed by
transparent huge pages). A :class:`Staging` buffer is allocated once, advised for huge pages,
and carved into the tensors of each group of reads.
"""

from __future__ import annotations

import math
import mmap

import torch

_ALIGN = 64
Spec = tuple[tuple[int, ...], torch.dtype]


def aligned_nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes a tensor of ``shape`` takes in a :func:`carve` layout."""
    return -(-math.prod(shape) * dtype.itemsize // _ALIGN) * _ALIGN


def carve(buffer: torch.Tensor, specs: list[Spec]) -> list[torch.Tensor]:
    """Tensors of ``specs`` (shape, dtype) laid out one after another at the start of the byte
    (uint8) tensor ``buffer``, each starting 64-byte aligned: views, sharing its memory."""
    out, offset = [], 0
    for shape, dtype in specs:
        out.append(buffer[offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape))
        offset += aligned_nbytes(shape, dtype)
    return out


def _huge_page_buffer(nbytes: int) -> torch.Tensor:
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buf, dtype=torch.uint8)


class Staging:
    """Tensors carved from one buffer that grows to the largest request and is then reused:
    the tensors of one :meth:`tensors` call are valid until the next call."""

    def __init__(self):
        self._buffer = torch.empty(0, dtype=torch.uint8)

    def tensors(self, specs: list[Spec]) -> list[torch.Tensor]:
        nbytes = sum(aligned_nbytes(shape, dtype) for shape, dtype in specs)
        if nbytes > self._buffer.numel():
            self._buffer = _huge_page_buffer(nbytes)
        return carve(self._buffer, specs)
