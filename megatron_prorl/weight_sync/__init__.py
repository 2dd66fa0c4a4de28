"""The weight sync: after every update, the policy's weights, in Hugging Face names, into the
rollout engine of each data-parallel replica.

Each replica's model-parallel group has one engine rank, its first rank. A *source* yields the
full model there as bounded buckets of ``(hf_name, tensor)`` (collective over the group: every
rank iterates to the end):

- :mod:`.collective`: TP gather and PP sends (NCCL on GPUs, gloo on CPU);
- :mod:`.shared_memory`: CPU ranks of one host write their shards straight into shared
  buckets (the CPU counterpart of CUDA-IPC refits).

:class:`WeightSync` picks the source from ``rollout.sync_transport`` and delivers its buckets to
the engine (:meth:`RolloutEngine.update_weights`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch.distributed as dist

from checkpoint_convert.arch import HFArch
from checkpoint_convert.checkpoint import unwrap_model
from megatron_prorl.config import ConfigError
from megatron_prorl.runtime.distributed import all_max
from megatron_prorl.weight_sync.collective import CollectiveExport, export_to_first_rank
from megatron_prorl.weight_sync.shared_memory import SharedMemoryExport, SharedMemoryUnavailable

__all__ = ["CollectiveExport", "SharedMemoryExport", "SyncTiming", "WeightSync", "build_source",
           "export_to_first_rank"]

log = logging.getLogger(__name__)


def build_source(model, arch: HFArch, bucket_bytes: int, transport: str = "auto"):
    """The source for ``rollout.sync_transport``: "collective", "shared_memory", or "auto"
    (shared memory for a CPU model-parallel group of several ranks that share a host, the
    collective otherwise). ``source()`` yields the buckets; ``source.close()`` releases it."""
    from megatron.core import parallel_state as ps

    collective = CollectiveExport(model, arch, bucket_bytes)
    on_cpu = next(unwrap_model(model).parameters()).device.type == "cpu"
    alone = dist.get_world_size(ps.get_model_parallel_group()) == 1
    if transport == "collective" or (transport == "auto" and (not on_cpu or alone)):
        return collective
    try:
        source = SharedMemoryExport(model, arch, bucket_bytes)
        log.info("weight sync: shared-memory transport (%d buckets)", len(source.plan))
        return source
    except SharedMemoryUnavailable as e:
        if transport == "shared_memory":
            raise ConfigError(f"rollout.sync_transport=shared_memory: {e}") from None
        log.warning("weight sync: shared memory unavailable (%s); using the collective transport", e)
        return collective


@dataclass(frozen=True)
class SyncTiming:
    seconds: float  # the slowest rank's
    gb_per_s: float  # bytes delivered to an engine / seconds


class WeightSync:
    """Delivers the model to ``engine`` (on the engine rank; None on the others). Collective
    over every rank: each call is one full sync."""

    def __init__(self, model, arch: HFArch, engine, bucket_bytes: int, transport: str = "auto"):
        self.engine = engine
        self.source = build_source(model, arch, bucket_bytes, transport)

    def __call__(self) -> SyncTiming:
        t0 = time.perf_counter()
        buckets = self.source()
        if self.engine is not None:
            moved = self.engine.update_weights(buckets).bytes
        else:
            moved = 0
            for _ in buckets:  # take part in the collectives
                pass
        seconds, moved = all_max([time.perf_counter() - t0, moved])
        return SyncTiming(seconds, moved / 1e9 / seconds)

    def close(self) -> None:
        self.source.close()
