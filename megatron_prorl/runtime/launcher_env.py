"""Launcher variables (srun/mpirun) and the environment TensorRT-LLM and its Ray workers see.

Under ``srun``/``mpirun`` a process carries the launcher's PMI/PMIx/MPI/Open MPI/Slurm
variables. TensorRT-LLM initialises MPI when it is imported (``tensorrt_llm/_utils.py`` runs
``from mpi4py import MPI`` and takes ``MPI.COMM_WORLD``; read in the stored copy at commit 000a01de,
whose ``version.py`` says 1.0.0rc4), and its Ray
workers start with a copy of the driver's environment (``RayExecutor.create_workers``,
``runtime_env["env_vars"] = os.environ.copy()``; stored ``tensorrt_llm/executor/ray_executor.py``).
With those variables present MPI_Init joins the job's PMIx world (errors or hangs) and
TensorRT-LLM takes itself for an MPI rank and picks the MPI orchestrator (what NeMo-RL's
``nemo_rl/distributed/virtual_cluster.py::init_ray`` documents and guards against by dropping
exactly these prefixes; verl's ``docs/workers/trtllm_worker.rst`` asks for the same, per the
project notes).

So the adapter imports TensorRT-LLM, and builds every LLM (the rebuild path too), inside
:func:`applied` with :func:`import_environment` / :func:`engine_environment`; the trainer's
own environment is restored afterwards (it read its Slurm variables at start-up and keeps them).

The engine's processes (its private Ray instance and the workers, which get a copy of the
environment the LLM is built in) also lose what the trainer set for itself,
:data:`TRAINING_ONLY_ENV`. The NCCL settings of the launch script stay: the engine's own NCCL
communicators (tensor parallelism over several GPUs) run on the same fabric.

Launch scripts use the same list, without importing torch::

    python -m megatron_prorl.runtime.launcher_env            # the prefixes, one per line
    python -m megatron_prorl.runtime.launcher_env --unset    # `unset NAME ...` for the current env

e.g. ``eval "$(python -m megatron_prorl.runtime.launcher_env --unset)"`` in a task that does not
need them any more (export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT first: the trainer
falls back to the Slurm variables only when those are absent).

Only the standard library is imported here (the package ``__init__`` is empty), so the printer
starts in a fraction of a second.
"""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager
from typing import Iterator, Mapping, MutableMapping, Sequence

# Variables whose presence makes MPI (mpi4py, Open MPI/HPC-X) or TensorRT-LLM believe the process
# is a rank of a launcher-managed job.
LAUNCHER_ENV_PREFIXES = ("PMIX_", "PMI_", "MPI_", "OMPI_", "SLURM_")

# Variables the trainer's processes run with that the engine's must not inherit, and why.
TRAINING_ONLY_ENV = frozenset({
    # slurm/prorl_4node.sh sets it for Megatron (as Megatron-LM's launch scripts do before
    # Blackwell): one hardware work queue per GPU keeps tensor-parallel communication kernels in
    # issue order so they overlap with the GEMMs. In the engine it serialises the streams
    # TensorRT-LLM runs side by side, which slows generation.
    "CUDA_DEVICE_MAX_CONNECTIONS",
    # The trainer's place in its own process group (torchrun's variables). The engine's workers
    # form a group of their own with explicit ranks (TensorRT-LLM's RayWorkerWrapper passes rank
    # and world_size to init_process_group; stored executor/ray_gpu_worker.py and
    # executor/ray/gpu_worker.py), so anything in them that reads these (torch's env://
    # rendezvous, a device chosen by LOCAL_RANK) would take the trainer's rank, world and GPU.
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
})


def launcher_variables(environ: Mapping[str, str]) -> list[str]:
    """Names of ``environ`` that carry launcher state, sorted."""
    return sorted(k for k in environ if k.startswith(LAUNCHER_ENV_PREFIXES))


def import_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment to import ``tensorrt_llm`` in: ``environ`` without launcher variables."""
    return {k: v for k, v in environ.items() if not k.startswith(LAUNCHER_ENV_PREFIXES)}


def engine_environment(environ: Mapping[str, str], gpus: Sequence[str], master_port: int) -> dict[str, str]:
    """The environment to start an engine's private Ray instance and its workers in:
    no launcher variables and none of :data:`TRAINING_ONLY_ENV`, ``CUDA_VISIBLE_DEVICES`` = the
    engine's physical GPUs (Ray then
    offers exactly those, and its workers map ``ray.get_gpu_ids()`` through this variable), and a
    ``MASTER_PORT`` of the engine's own (the workers' torch.distributed rendezvous reads it; the
    trainer's would collide with the trainer's store and with the node's other engines)."""
    if not gpus:
        raise ValueError("engine_environment: no GPUs given for the engine")
    env = {k: v for k, v in import_environment(environ).items() if k not in TRAINING_ONLY_ENV}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env["MASTER_PORT"] = str(master_port)
    return env


def physical_gpu_ids(local_indices: Sequence[int], visible: str | None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries of this process's CUDA devices ``local_indices``
    (``visible`` is this process's ``CUDA_VISIBLE_DEVICES``, None when unset)."""
    if visible is None or visible.strip() == "":
        return [str(i) for i in local_indices]
    entries = [e.strip() for e in visible.split(",")]
    out = []
    for i in local_indices:
        if not 0 <= i < len(entries):
            raise ValueError(f"CUDA device {i} is not among CUDA_VISIBLE_DEVICES={visible!r}")
        if not entries[i].isdigit():
            # Ray and TensorRT-LLM's workers parse GPU ids as integers.
            raise ValueError(f"CUDA_VISIBLE_DEVICES={visible!r}: entry {entries[i]!r} is not a GPU index; "
                             "the TensorRT-LLM engine needs integer GPU indices (no UUIDs or MIG ids)")
        out.append(entries[i])
    return out


@contextmanager
def applied(environ: MutableMapping[str, str], env: Mapping[str, str]) -> Iterator[None]:
    """``environ`` is ``env`` inside the block; afterwards the variables entering it changed have
    their previous values again, while variables set inside the block by others (TensorRT-LLM
    sets some of its own and relies on them later) stay. Only differing keys are touched: other
    threads of the trainer may read the environment meanwhile."""
    before = {k: environ.get(k) for k in set(environ) | set(env) if environ.get(k) != env.get(k)}
    for key in before:
        if key in env:
            environ[key] = env[key]
        else:
            del environ[key]
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == []:
        print("\n".join(LAUNCHER_ENV_PREFIXES))
        return 0
    if args == ["--unset"]:
        names = launcher_variables(environ)
        if names:
            print("unset " + " ".join(shlex.quote(n) for n in names))
        return 0
    print(f"usage: python -m megatron_prorl.runtime.launcher_env [--unset]; got {' '.join(args)!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
