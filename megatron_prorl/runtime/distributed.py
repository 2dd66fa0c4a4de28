"""Process-group and Megatron parallel-state start-up.

Rank, world size and local rank come from torchrun's variables, else from Slurm's
(srun with one task per GPU), else a single process. NCCL with CUDA, gloo without (where the
CPU backend is enabled first), plus a gloo group for host-side bookkeeping (see
:mod:`megatron_prorl.runtime.device`). TP and PP come from the config; DP = world / (TP * PP).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_prorl.config import BatchConfig, ConfigError, ParallelConfig
from megatron_prorl.runtime import cpu_backend, device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list: 'gpu[003-006,9],cpu1' -> 'gpu003'."""
    m = re.match(r"([^\[,]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_port(job_id: str) -> int:
    """A port every task of a job derives alike, spread so concurrent jobs on a node differ."""
    return 20000 + int(re.sub(r"\D", "", job_id) or 0) % 20000


def under_launcher(environ: Mapping[str, str] = os.environ) -> bool:
    """Started by torchrun (or a launcher setting its variables) or by Slurm."""
    return ("RANK" in environ and "WORLD_SIZE" in environ) or ("SLURM_PROCID" in environ and "SLURM_NTASKS" in environ)


def detect_env(environ: Mapping[str, str] = os.environ) -> DistEnv:
    e = environ
    if "RANK" in e and "WORLD_SIZE" in e:  # torchrun (or an explicit launcher)
        return DistEnv(int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)),
                       e.get("MASTER_ADDR", "127.0.0.1"), int(e.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in e and "SLURM_NTASKS" in e:
        addr = e.get("MASTER_ADDR") or first_slurm_host(e.get("SLURM_JOB_NODELIST", "localhost"))
        port = int(e.get("MASTER_PORT") or slurm_port(e.get("SLURM_JOB_ID", "0")))
        return DistEnv(int(e["SLURM_PROCID"]), int(e["SLURM_NTASKS"]), int(e.get("SLURM_LOCALID", 0)),
                       addr, port)
    return DistEnv(0, 1, 0, "127.0.0.1", free_port())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_backend(parallel: ParallelConfig) -> str:
    if parallel.backend != "auto":
        return parallel.backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def cuda_device_index(local_rank: int, device_count: int) -> int:
    """The GPU a rank uses: the one of its local rank, or the only one it sees (srun
    --gpus-per-task=1 gives every task its own GPU, as device 0 of its own CUDA_VISIBLE_DEVICES)."""
    if device_count == 1:
        return 0
    if not 0 <= local_rank < device_count:
        raise ConfigError(f"local rank {local_rank} but {device_count} GPUs visible "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): one GPU per "
                          "task on a node, or every GPU of the node visible to each task")
    return local_rank


def init_distributed(parallel: ParallelConfig, env: Optional[DistEnv] = None, seed: int = 1234) -> DistEnv:
    """Initialise torch.distributed and Megatron's parallel state from the config. Every group
    gets ``parallel.collective_timeout_minutes``: the default group, the host group, and
    Megatron's (megatron-core 0.16.1 parallel_state.initialize_model_parallel(...,
    distributed_timeout_minutes), which it gives each group it creates, gloo ones included;
    its own default is 30)."""
    env = env or detect_env()
    backend = resolve_backend(parallel)
    if backend == "gloo":
        cpu_backend.enable()
    else:
        torch.cuda.set_device(cuda_device_index(env.local_rank, torch.cuda.device_count()))
    from megatron.core import parallel_state, tensor_parallel

    timeout = timedelta(minutes=parallel.collective_timeout_minutes)
    if not dist.is_initialized() and env.world_size == 1:
        # One process needs no rendezvous: a port chosen in advance can be taken by another
        # process before the store binds it (EADDRINUSE when several runs start on one host).
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    elif not dist.is_initialized():
        dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=env.rank, world_size=env.world_size, timeout=timeout)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        distributed_timeout_minutes=parallel.collective_timeout_minutes)
    device.create_host_group(backend, timeout)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return env


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums of python numbers over every rank (the values themselves outside
    torch.distributed)."""
    return _all_reduce(values, "SUM")


def all_max(values: Sequence[float]) -> list[float]:
    """Element-wise maxima of python numbers over every rank."""
    return _all_reduce(values, "MAX")


def _all_reduce(values: Sequence[float], op: str) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op), group=device.host_group())
    return t.tolist()


def shutdown_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    device.destroy_host_group()
    if dist.is_initialized():
        dist.destroy_process_group()


def check_world_size(p: ParallelConfig, b: BatchConfig, world_size: int) -> None:
    """The world splits into TP x PP model replicas, and each step's prompts over the replicas."""
    mp = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    if world_size % mp:
        raise ConfigError(
            f"world size {world_size} is not divisible by tensor_model_parallel_size x "
            f"pipeline_model_parallel_size = {mp}")
    if b.prompts_per_step % (world_size // mp):
        raise ConfigError(f"batch.prompts_per_step={b.prompts_per_step} is not divisible by the "
                          f"data-parallel size {world_size // mp} (world size {world_size} / {mp})")
