"""Rank discovery from torchrun and Slurm variables, and the CPU backend's GPU no-op."""

import os
import subprocess
import sys

import pytest

from megatron_prorl.runtime.distributed import detect_env, first_slurm_host, slurm_port


def test_torchrun_variables():
    env = detect_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                      "MASTER_PORT": "29400"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (3, 8, 1, "node7", 29400)


def test_slurm_variables():
    env = detect_env({"SLURM_PROCID": "13", "SLURM_NTASKS": "32", "SLURM_LOCALID": "5",
                      "SLURM_JOB_NODELIST": "gpu[017-020]", "SLURM_JOB_ID": "123456"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (13, 32, 5, "gpu017")
    assert env.master_port == slurm_port("123456") == 20000 + 123456 % 20000


def test_torchrun_wins_over_slurm():
    # torchrun inside an sbatch allocation: torchrun's variables describe the processes.
    env = detect_env({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (env.rank, env.world_size) == (1, 2)


def test_single_process_default():
    env = detect_env({})
    assert (env.rank, env.world_size, env.local_rank) == (0, 1, 0) and env.master_port > 0


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("gpu[003-006,9]", "gpu003"), ("a[1,3],b2", "a1"), ("dgx-h100-[12-15]", "dgx-h100-12"),
    ("n1,n2", "n1"),
])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_cpu_backend_is_a_noop_when_cuda_is_present():
    # In a fresh interpreter that reports CUDA: enable() must not touch torch or Megatron.
    code = """
import torch
torch.cuda.is_available = lambda: True
current = torch.cuda.current_device
from megatron_prorl.runtime import cpu_backend
from megatron.core.tensor_parallel import random as r
tracker = r._CUDA_RNG_STATE_TRACKER
assert cpu_backend.enable() is False and not cpu_backend.is_enabled()
assert torch.cuda.current_device is current and r._CUDA_RNG_STATE_TRACKER is tracker
assert torch._C._is_torch_function_mode_enabled() is False
print("noop")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "noop", out.stderr


def test_cpu_backend_enables_without_cuda():
    code = """
import torch
from megatron_prorl.runtime import cpu_backend
assert cpu_backend.enable() is True
assert torch.zeros(2, device="cuda").device.type == "cpu"
assert torch.ones(1).cuda().device.type == "cpu"
assert torch.cuda.current_device() == torch.device("cpu")
from megatron.core.tensor_parallel import random as r
r._CUDA_RNG_STATE_TRACKER.add("x", 5)
outer = torch.get_rng_state()
with r._CUDA_RNG_STATE_TRACKER.fork("x"):
    a = torch.rand(3)
with r._CUDA_RNG_STATE_TRACKER.fork("x"):
    b = torch.rand(3)
assert not torch.equal(a, b)  # the named state advances
assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(5)))
assert torch.equal(torch.get_rng_state(), outer)  # the default stream is untouched
print("cpu")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "cpu", out.stderr


def test_the_gpu_of_a_rank_under_torchrun_and_under_srun_with_one_gpu_per_task():
    from megatron_prorl.config import ConfigError
    from megatron_prorl.runtime.distributed import cuda_device_index

    assert [cuda_device_index(r, 8) for r in range(8)] == list(range(8))  # the node's GPUs, by local rank
    assert cuda_device_index(5, 1) == 0  # srun --gpus-per-task=1: the task's own GPU is device 0
    with pytest.raises(ConfigError, match="local rank 4 but 2 GPUs visible"):
        cuda_device_index(4, 2)


def _group_timeouts(minutes: int) -> dict:
    """Start torch.distributed and Megatron's parallel state as the trainer does (TP2, NCCL on a
    simulated GPU machine, so the host group is a group of its own) and read each group's
    timeout off its real gloo backend."""
    import torch
    import torch.distributed as dist
    from helpers.devsim import simulated_cuda
    from megatron.core import parallel_state as ps

    from megatron_prorl.runtime import device
    from megatron_prorl.config import ParallelConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed

    def timeout(group) -> float:
        return group._get_backend(torch.device("cpu")).options._timeout.total_seconds() / 60

    with simulated_cuda() as sim:
        init_distributed(ParallelConfig(tensor_model_parallel_size=2, collective_timeout_minutes=minutes))
        groups = {"default": dist.group.WORLD, "host": device.host_group(), "tp": ps.get_tensor_model_parallel_group(),
                  "pp": ps.get_pipeline_model_parallel_group(), "dp": ps.get_data_parallel_group(),
                  "dp_gloo": ps.get_data_parallel_group_gloo(), "mp": ps.get_model_parallel_group()}
        out = {name: (sim.backend_of(group), timeout(group)) for name, group in groups.items()}
        shutdown_distributed()
    return out


def test_the_collective_timeout_reaches_every_process_group():
    """parallel.collective_timeout_minutes is every group's: the default group (NCCL), the gloo
    host group, and the groups Megatron-Core makes (through initialize_model_parallel's
    distributed_timeout_minutes), NCCL and gloo alike. 7 is neither torch's default (30 for
    gloo, 10 for NCCL) nor Megatron's (30)."""
    from megatron_prorl.runtime.launch import spawn

    for groups in spawn(_group_timeouts, 2, 7):
        assert groups == {"default": ("nccl", 7), "host": ("gloo", 7), "tp": ("nccl", 7), "pp": ("nccl", 7),
                          "dp": ("nccl", 7), "dp_gloo": ("gloo", 7), "mp": ("nccl", 7)}, groups


def test_the_collective_timeout_is_checked():
    from megatron_prorl.config import ConfigError, load_config

    assert load_config().parallel.collective_timeout_minutes == 60
    with pytest.raises(ConfigError, match="parallel.collective_timeout_minutes=0: must be >= 1"):
        load_config(overrides=["parallel.collective_timeout_minutes=0"])


def test_a_single_process_needs_no_port():
    # The port a single process would have used is taken (as another run on the host can take
    # it between its choice and its use): starting must not depend on it.
    code = """
import socket
from megatron_prorl.runtime import distributed
from megatron_prorl.config import ParallelConfig
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
distributed.free_port = lambda: taken.getsockname()[1]
env = distributed.init_distributed(ParallelConfig())
from megatron.core import parallel_state
print("ok", env.world_size, parallel_state.get_tensor_model_parallel_world_size())
distributed.shutdown_distributed()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "ok 1 1" in done.stdout, done.stderr[-3000:]


def _a_collective_with_a_stopped_peer() -> tuple[float, str] | None:
    """Gloo, as a CPU run under torchrun or srun has it (no launcher of ours watching): rank 1
    stops (SIGSTOP) before the collective; rank 0 measures how long it waits, then lets rank 1
    go on so that both return."""
    import signal
    import time

    import torch.distributed as dist

    from megatron_prorl.config import ParallelConfig
    from megatron_prorl.runtime.distributed import all_sum, init_distributed

    init_distributed(ParallelConfig(collective_timeout_minutes=1))
    pids = [None, None]
    dist.all_gather_object(pids, os.getpid())
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
        return None
    started = time.monotonic()
    try:
        all_sum([1.0])
    except RuntimeError as exc:
        return time.monotonic() - started, str(exc)
    finally:
        os.kill(pids[1], signal.SIGCONT)
    return time.monotonic() - started, "no error"


def test_without_our_launcher_a_stopped_peer_ends_the_waiting_rank_at_the_collective_timeout():
    """Under torchrun or srun no parent of ours watches the ranks' heartbeats: the collective
    timeout does. Gloo raises on it (a RuntimeError out of the collective; the rank exits with
    it, and torchrun or srun --kill-on-bad-exit end the others)."""
    from megatron_prorl.runtime.launch import spawn

    (elapsed, error), _ = spawn(_a_collective_with_a_stopped_peer, 2)
    assert "Timed out" in error, error
    assert 55 < elapsed < 120, elapsed
