"""Where the trainer's tensors live, and which process group carries which collective.

One rule for every tensor the trainer creates:

- What the model reads, and whatever is reduced on the default group or Megatron's groups (NCCL
  on GPUs, which takes CUDA tensors only), lives on :func:`current`: the CUDA device this rank
  was bound to (``torch.cuda.set_device`` in ``distributed.init_distributed``), or the CPU without
  CUDA. Data built on the host (a TrainBatch from token lists) goes there once, through
  :func:`to_current`, where it enters the trainer (``experience.to_train_batch``); tensors made
  on the device side pass ``device=current()``, and tensors derived from others follow them.
- Host-side bookkeeping (Python numbers: counts, timings, flags) is reduced on :func:`host_group`,
  a gloo group over all ranks created beside the NCCL ones, so it never round-trips through a
  GPU. Megatron-Core makes gloo groups the same way for its CPU-side data-parallel work
  (megatron-core 0.16.1 and 0.17.0, megatron/core/parallel_state.py:
  ``initialize_model_parallel(create_gloo_process_groups=True)``, read back with
  ``get_data_parallel_group_gloo()``); it has no world-wide one, so this module makes it.
- Rollout-engine outputs enter the trainer on the host (:func:`to_host`), where groups are
  scored, broadcast to the replica and turned into batches.

Object collectives (``broadcast_object_list`` ...) need nothing: on a NCCL group torch stages
them through the current CUDA device itself (torch 2.13, distributed_c10d._get_object_coll_device).

Memory between the trainer and a colocated engine: torch's caching allocator keeps the blocks of
freed tensors for reuse, and to every other process (the engine's workers) they stay in use.
:func:`release_cached_memory` hands them back before the engine maps its memory again
(``torch.cuda.empty_cache``: "Release all unoccupied cached memory ... so that those can be used
in other GPU application"; ``torch.cuda.mem_get_info``: cudaMemGetInfo, the device's free memory
whoever holds the rest; torch/cuda/memory.py, read in torch 2.13, CI's; the image runs 2.11, whose
copy was not readable here).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
from typing import Optional, TypeVar

import torch
import torch.distributed as dist

HOST = torch.device("cpu")

T = TypeVar("T")

_host_group: Optional[dist.ProcessGroup] = None


def current() -> torch.device:
    """This rank's compute device: its CUDA device, or the CPU without CUDA."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else HOST


def to_current(obj: T) -> T:
    """``obj`` (a tensor, a dataclass of tensors, or a list/tuple of them) on :func:`current`."""
    return _move(obj, current())


def to_host(obj: T) -> T:
    """``obj`` (as for :func:`to_current`) in host memory."""
    return _move(obj, HOST)


def _move(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(item, device) for item in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = {f.name: _move(value, device) for f in dataclasses.fields(obj)
                 if isinstance(value := getattr(obj, f.name), torch.Tensor)}
        return dataclasses.replace(obj, **moved) if moved else obj
    return obj


def free_memory() -> Optional[int]:
    """Bytes free on this rank's CUDA device, whoever uses the rest (``torch.cuda.mem_get_info``
    asks the driver); None without CUDA."""
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None


def release_cached_memory() -> Optional[tuple[int, int]]:
    """Give the caching allocator's unused blocks back to the device (CUDA only): first a garbage
    collection, since tensors kept alive only by reference cycles (autograd graphs, tracebacks)
    hold their blocks until the collector runs, then ``torch.cuda.empty_cache``. Returns the free
    bytes before and after; None without CUDA (nothing to give back)."""
    before = free_memory()
    if before is None:
        return None
    gc.collect()
    torch.cuda.empty_cache()
    return before, free_memory()


def create_host_group(backend: str, timeout: datetime.timedelta) -> None:
    """Called once by every rank after ``init_process_group``: under gloo the default group is
    already a host group; under NCCL a gloo group over all ranks is created (a collective), with
    ``timeout`` (``new_group`` does not take the default group's, it falls back to torch's 30
    minutes: checked with torch 2.13)."""
    global _host_group
    _host_group = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)


def destroy_host_group() -> None:
    global _host_group
    _host_group = None


def host_group() -> Optional[dist.ProcessGroup]:
    """The group for host-side bookkeeping collectives (None: the default group, a gloo one)."""
    return _host_group
