"""The weight sync's shared-memory transport, for model-parallel CPU ranks on one host.

The collective export gathers every shard over TP and sends it over PP through gloo, whose
TCP loopback copies each byte several times between processes. Here every rank writes its own
shards, once and in parallel, straight into their place in Hugging Face-layout buckets in
shared memory, and the engine rank hands the finished buckets to the engine in place: the CPU
counterpart of the CUDA IPC handles GPU engines refit from.

Two bucket slots alternate, so the ranks fill bucket k+1 while the engine copies bucket k, and
one barrier per bucket orders it: after barrier k bucket k is complete; the engine rank enters
barrier k+1 only after consuming bucket k, so after barrier k+1 bucket k's slot is free again.
"""

from __future__ import annotations

import mmap
import os
import secrets
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from checkpoint_convert.arch import HFArch
from checkpoint_convert.buckets import Bucket, plan_buckets
from checkpoint_convert.checkpoint import unwrap_model
from checkpoint_convert.mapping import canonical_name, hf_shapes, shard_regions
from checkpoint_convert.model_weights import layout_here
from checkpoint_convert.staging import aligned_nbytes, carve

SHM_DIR = "/dev/shm"
_HEADER = 64  # the creator's token, checked by every rank that maps the file; keeps tensors aligned


class SharedMemoryUnavailable(RuntimeError):
    """The ranks of a group cannot map one shared buffer (other hosts, no room in /dev/shm)."""


class SharedArena:
    """``nbytes`` of memory mapped by every rank of ``group`` (collective to create).

    The group's first rank creates the backing file in ``shm_dir``; the others map it and check
    the creator's random token, which proves they share the memory (not just a path on some
    other host). The file is unlinked once all have mapped it, so nothing outlives the processes.
    """

    def __init__(self, nbytes: int, group, shm_dir: str = SHM_DIR):
        lead = dist.get_rank(group) == 0
        total = _HEADER + nbytes
        self._mmap: Optional[mmap.mmap] = None
        problem = ""
        offer: list = [None, None, ""]
        if lead:
            path = os.path.join(shm_dir, f"prorl-sync-{os.getpid()}-{secrets.token_hex(8)}")
            token = secrets.token_bytes(16)
            try:
                stat = os.statvfs(shm_dir)
                free = stat.f_bavail * stat.f_frsize
                if free < total:
                    raise OSError(f"{shm_dir} has {free / 2**20:.0f} MiB free, the sync needs "
                                  f"{total / 2**20:.0f} MiB (docker: --shm-size)")
                self._map(path, total, create=True)
                self._mmap[:16] = token
                offer = [path, token, ""]
            except OSError as e:
                offer = [None, None, str(e)]
        dist.broadcast_object_list(offer, src=dist.get_global_rank(group, 0), group=group)
        path, token, problem = offer
        if not lead and path is not None:
            try:
                self._map(path, total, create=False)
                if self._mmap[:16] != token:
                    problem = f"{path} is another file on rank {dist.get_rank()}'s host"
            except OSError as e:
                problem = f"rank {dist.get_rank()} cannot map {path}: {e}"
        problems: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(problems, problem, group=group)
        if lead and path is not None:
            os.unlink(path)
        problems = [p for p in problems if p]
        if problems:
            self.close()
            raise SharedMemoryUnavailable("; ".join(dict.fromkeys(problems)))
        self.buffer = torch.frombuffer(self._mmap, dtype=torch.uint8, offset=_HEADER, count=nbytes)

    def _map(self, path: str, size: int, create: bool) -> None:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size)
        except OSError:
            if create:  # ours: leave nothing behind
                os.unlink(path)
            raise
        finally:
            os.close(fd)

    def close(self) -> None:
        self.buffer = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # views still alive: the mapping goes with the last of them
                pass
            self._mmap = None


class SharedMemoryExport:
    """Callable yielding the model's HF buckets on the model-parallel group's first rank.

    Collective over the model-parallel group, like :func:`~megatron_prorl.weight_sync.collective.export_to_first_rank`:
    every rank iterates to the end; the others yield nothing. Bucket tensors live in shared
    memory, valid until the next bucket is requested: consume (copy) each one first.
    Creating it raises :class:`SharedMemoryUnavailable` (on every rank) when the group's ranks
    cannot share memory.
    """

    def __init__(self, model, arch: HFArch, bucket_bytes: int):
        from megatron.core import parallel_state as ps

        self.gpt = unwrap_model(model)
        self.group = ps.get_model_parallel_group()
        self.lead = dist.get_rank(self.group) == 0
        layout = layout_here(arch)
        pp_rank, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
        dtype = self.gpt.config.params_dtype
        shapes = hf_shapes(arch)
        nbytes = {name: aligned_nbytes(shape, dtype) for name, shape in shapes.items()}
        self.plan = plan_buckets(list(nbytes.items()), bucket_bytes)
        slot_bytes = max(sum(nbytes[n] for n in bucket) for bucket in self.plan)
        self.arena = SharedArena(2 * slot_bytes, self.group)
        # views[slot][hf_name]: the tensor's place in either slot
        self.views: list[dict[str, torch.Tensor]] = [{}, {}]
        for bucket in self.plan:
            for slot, views in enumerate(self.views):
                views.update(zip(bucket, carve(self.arena.buffer[slot * slot_bytes:],
                                               [(shapes[n], dtype) for n in bucket])))
        # This rank's writes per bucket: (local parameter name, shard index, hf_name, HF index).
        owner = {n: p for p in layout.params if not p.tied_copy for n in p.hf_names}
        self.writes = [[(layout.local_name(owner[name]), shard_index, name, hf_index)
                        for name in bucket if layout.stage(owner[name]) == pp_rank
                        for hf_name, hf_index, shard_index in shard_regions(owner[name], layout, tp_rank)
                        if hf_name == name]
                       for bucket in self.plan]

    @torch.no_grad()
    def __call__(self) -> Iterator[Bucket]:
        params = {canonical_name(n): p.detach() for n, p in self.gpt.named_parameters()}
        for k, names in enumerate(self.plan):
            views = self.views[k % 2]
            for local, shard_index, name, hf_index in self.writes[k]:
                views[name][hf_index].copy_(params[local][shard_index])
            dist.barrier(group=self.group)
            if self.lead:
                yield [(name, views[name]) for name in names]
        # Nobody writes the next sync's first buckets before the last ones are consumed.
        dist.barrier(group=self.group)

    def close(self) -> None:
        self.views = [{}, {}]
        self.arena.close()
