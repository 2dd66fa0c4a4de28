"""The simulated CUDA device (tests/helpers/devsim.py) catches what a GPU would reject, and only that."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.devsim import DeviceMismatch, simulated_cuda
from megatron_prorl.runtime.launch import spawn


def test_code_takes_its_gpu_branches_while_computing_on_the_cpu():
    with simulated_cuda(megatron=False) as sim:
        assert torch.cuda.is_available()
        torch.cuda.set_device(1)
        x = torch.ones(3, device="cuda")
        assert x.is_cuda and x.device == torch.device("cuda", 1) and x.type() == "torch.cuda.FloatTensor"
        assert sim.device_of(x) == "cuda:1" and sim.device_of(torch.zeros(2, device=x.device)) == "cuda:1"
        assert sim.device_of(x * 2 + 1) == "cuda:1"
        assert x.sum().item() == 3.0  # data-dependent code runs
        with pytest.raises(DeviceMismatch, match="move it to the CPU first"):
            x.numpy()
        assert x.cpu().numpy().tolist() == [1.0, 1.0, 1.0]
    assert not torch.cuda.is_available()


def test_device_moves_copy_and_relabel():
    with simulated_cuda(megatron=False) as sim:
        host = torch.arange(4.0)
        dev = host.to("cuda")
        assert sim.device_of(host) == "cpu" and sim.device_of(dev) == "cuda:0"
        dev.add_(1)
        assert host.tolist() == [0, 1, 2, 3]  # a real move copies: the host tensor is untouched
        assert dev.cuda() is dev and host.cpu() is host
        assert sim.device_of(dev.to(host)) == "cpu" and sim.device_of(host.to(dev)) == "cuda:0"
        assert sim.device_of(torch.as_tensor(host, device="cuda")) == "cuda:0" and sim.device_of(host) == "cpu"


def test_linear_forward_backward_passes_on_cuda_and_fails_on_a_cpu_input():
    with simulated_cuda(megatron=False) as sim:
        layer = torch.nn.Linear(8, 4).cuda()
        x = torch.randn(5, 8, device="cuda", requires_grad=True)
        loss = layer(x).square().mean()
        loss.backward()
        assert sim.device_of(loss) == "cuda:0"
        assert {sim.device_of(p.grad) for p in layer.parameters()} == {"cuda:0"} and sim.device_of(x.grad) == "cuda:0"
        with pytest.raises(DeviceMismatch, match=r"aten\.\w+.* mixes devices: .*\(5, 8\)"):
            layer(torch.randn(5, 8))


def test_module_to_keeps_labels_through_param_data_swaps():
    with simulated_cuda(megatron=False) as sim:
        layer = torch.nn.Linear(3, 3)
        weight = layer.weight
        layer.to("cuda")
        assert layer.weight is weight and sim.device_of(weight) == "cuda:0" and weight.device.type == "cuda"
        layer.cpu()
        assert sim.device_of(layer.weight) == "cpu"
        layer.cuda(0)
        with torch.device("cuda"):  # a device context, as engines build models
            built = torch.nn.Linear(3, 3)
        assert {sim.device_of(p) for p in [*layer.parameters(), *built.parameters()]} == {"cuda:0"}


def test_embedding_rejects_cpu_ids_while_indexing_accepts_a_cpu_index():
    with simulated_cuda(megatron=False):
        weight = torch.randn(10, 4, device="cuda")
        ids = torch.tensor([[1, 2, 3]])
        with pytest.raises(DeviceMismatch, match=r"embedding.*cpu tensors \(1, 3\) int64"):
            F.embedding(ids, weight)
        F.embedding(ids.cuda(), weight)
        weight[torch.tensor([0, 2])]  # torch moves CPU indices
        with pytest.raises(DeviceMismatch):
            torch.randn(10)[torch.tensor([0, 2], device="cuda")]


def test_cpu_scalars_join_cuda_ops_but_cuda_scalars_do_not_join_cpu_ops():
    with simulated_cuda(megatron=False):
        x = torch.ones(3, device="cuda")
        x * torch.tensor(2.0)
        torch.where(x > 0, x, torch.zeros(()))
        with pytest.raises(DeviceMismatch):
            torch.ones(3) * torch.tensor(2.0, device="cuda")
        with pytest.raises(DeviceMismatch):
            torch.cat([x, torch.ones(3)])


def test_memory_is_taken_by_live_and_cached_blocks_until_empty_cache():
    """mem_get_info as a process sees its GPU under torch's caching allocator: a freed tensor's
    block stays taken until empty_cache(); per device; host tensors take none of it."""
    from helpers.devsim import DEVICE_MEMORY

    with simulated_cuda(megatron=False):
        assert torch.cuda.mem_get_info() == (DEVICE_MEMORY, DEVICE_MEMORY)
        x = torch.zeros(1 << 20, device="cuda")  # 4 MiB
        host = torch.zeros(1 << 20)
        free = lambda *device: torch.cuda.mem_get_info(*device)[0]  # noqa: E731
        assert free() == DEVICE_MEMORY - (4 << 20) and free(1) == free("cuda:1") == DEVICE_MEMORY
        view = x[: 1 << 10]
        del x
        assert free() == DEVICE_MEMORY - (4 << 20)  # a view keeps the storage alive
        del view
        assert free() == DEVICE_MEMORY - (4 << 20)  # freed, but cached
        torch.cuda.empty_cache()
        assert free() == DEVICE_MEMORY and host.sum() == 0
        torch.cuda.set_device(1)
        y = torch.ones(256, device="cuda")
        assert free(1) == free() == DEVICE_MEMORY - 1024 and free(0) == DEVICE_MEMORY
        del y


def _collectives() -> dict:
    import torch.distributed as dist

    out = {}
    with simulated_cuda(megatron=False) as sim:
        rank = int(__import__("os").environ["RANK"])
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", init_method="env://")
        gloo = dist.new_group(backend="gloo")
        sub = dist.new_group([0, 1])  # no backend: the default's (NCCL)
        out["backends"] = (sim.backend_of(dist.group.WORLD), sim.backend_of(gloo), sim.backend_of(sub))
        x = torch.full((2,), float(rank + 1), device="cuda")
        dist.all_reduce(x)
        dist.all_reduce(x, group=sub)
        out["sum"] = x.tolist()
        gathered = [torch.empty(2, device="cuda") for _ in range(2)]
        dist.all_gather(gathered, x)
        if rank == 0:
            dist.send(x, dst=1)
        else:
            dist.recv(x, src=0)
        meta = torch.tensor([float(rank)])
        dist.all_reduce(meta, group=gloo)
        objects = [{"rank": rank}]
        dist.broadcast_object_list(objects, src=1)  # stages through the current CUDA device
        gathered_objects = [None, None]
        dist.all_gather_object(gathered_objects, rank)
        out["objects"] = (objects[0], gathered_objects)
        dist.barrier()
        errors = []
        for tensor, group in ((torch.ones(3), None), (torch.ones(3), sub), (torch.ones((), dtype=torch.int64), None),
                              (torch.ones(3, device="cuda"), gloo), (torch.ones(3, device=f"cuda:{1 - rank}"), None)):
            try:
                dist.all_reduce(tensor, group=group)
                errors.append("")
            except DeviceMismatch as e:
                errors.append(str(e))
        out["errors"] = errors
        dist.destroy_process_group()
    return out


def test_collectives_take_the_device_their_backend_requires():
    for rank, out in enumerate(spawn(_collectives, 2)):
        assert out["backends"] == ("nccl", "gloo", "nccl")
        assert out["sum"] == [6.0, 6.0]
        assert out["objects"] == ({"rank": 1}, [0, 1])
        cpu_on_nccl, cpu_on_sub, cpu_scalar_on_nccl, cuda_on_gloo, other_gpu = out["errors"]
        assert "allreduce_ on a NCCL group (ranks [0, 1]) got tensors on cpu ((3,) float32)" in cpu_on_nccl
        assert f"tensors on the current CUDA device cuda:{rank}" in cpu_on_nccl
        assert "NCCL group" in cpu_on_sub and "cpu" in cpu_scalar_on_nccl  # NCCL takes no CPU scalar either
        assert "a GLOO group takes CPU tensors" in cuda_on_gloo
        assert f"got tensors on cuda:{1 - rank}" in other_gpu  # the neighbour rank's GPU


def test_bytes_are_counted_per_device_with_a_resettable_peak():
    with simulated_cuda(megatron=False) as sim:
        a = torch.zeros(1000, device="cuda")  # 4000 bytes
        torch.cuda.set_device(1)
        b = torch.zeros(10, dtype=torch.float64, device="cuda")
        host = torch.zeros(10**6)  # CPU tensors are not counted
        assert (sim.allocated("cuda:0"), sim.allocated("cuda:1")) == (4000, 80)
        c = a * 2  # a new storage on a's device
        view = c[:10]
        assert sim.allocated("cuda:0") == 8000
        del c
        assert sim.allocated("cuda:0") == 8000  # the view keeps the storage alive
        del view
        assert sim.allocated("cuda:0") == 4000 and sim.max_allocated("cuda:0") == 8000
        sim.reset_peak()
        assert sim.max_allocated("cuda:0") == 4000
        a.resize_(2000)  # in place, larger
        assert sim.allocated("cuda:0") == 8000
        moved = b.cpu()
        del b
        assert sim.allocated("cuda:1") == 0 and sim.max_allocated("cuda:1") == 80
        assert moved.sum().item() == 0 and host.numel() == 10**6
