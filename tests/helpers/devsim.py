"""A simulated CUDA device on a machine without a GPU (a CPU-only torch build, or a CUDA build
without a driver, as in the image lane), strict about devices.

Everything computes on the CPU, but every tensor carries the device it would have on a GPU
machine, and an operation that would fail there fails here:

- a TorchFunctionMode sees each torch call first: it rewrites CUDA device arguments
  (``Tensor.to/.cuda``, ``device=`` keywords, integer device indices) to the CPU, labels what
  they return ``cuda:N``, copies where a real device move copies, and answers ``.device``,
  ``.is_cuda``, ``.type()`` and ``.get_device()`` from the label, so code takes its GPU branches;
- a TorchDispatchMode sees every aten op (inside Megatron-Core and autograd too): outputs inherit
  their inputs' label, and an op whose inputs span two devices raises :class:`DeviceMismatch`
  naming the op and the shapes. A 0-dim CPU tensor may join a CUDA op (as on a GPU); cross-device
  copies and CPU indices into a CUDA tensor are allowed (as on a GPU);
- collectives (the ``c10d`` ops every torch.distributed call and Megatron's p2p reach) are checked
  for the device their group's backend takes: a group standing for NCCL (the default group, and
  every group created without an explicit backend, Megatron's TP/PP/DP/MP groups among them) only
  tensors on the current CUDA device, a gloo group only CPU tensors. The real backend stays gloo;
  object collectives (``broadcast_object_list`` ...) stage through the current CUDA device on an
  "NCCL" group, as torch does on a GPU;
- ``torch.cuda.is_available()`` is True, ``set_device`` / ``current_device`` keep an index,
  ``torch.Generator(device="cuda")`` is a CPU generator.

Labels are kept per storage (``untyped_storage()``), not per tensor object, so
views, ``param.data = ...`` swaps (``Module.to``) and Megatron's parameter buffers keep them.
Tensors the modes never saw created (``torch.from_numpy``, unpickled ones) count as CPU tensors.

Why not the alternatives (torch 2.13.0+cpu, tried): FakeTensorMode with a "cuda" device aborts in
C++ on the first linear layer; the "meta" device has no data (sampling, rewards and ``.item()``
cannot run) and accepts CPU indices into embeddings, the very crash this must catch.

Megatron-Core's own CPU obstacles (RNG tracker, gradient clipping) are removed, and streams and
synchronisation stood in for, by ``megatron_prorl.cpu_backend``, which is enabled first: the
simulation is that backend plus labels.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator, Optional

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CPU = "cpu"
DEVICE_COUNT = 8  # what torch.cuda.device_count() reports: one node's GPUs

aten = torch.ops.aten
_METHOD_WRAPPER = type(torch._C.TensorBase.device.__get__)


class DeviceMismatch(RuntimeError):
    """An operation that would fail on a GPU machine: tensors on two devices, or a collective
    given tensors its backend cannot take."""


def _describe(tensors) -> str:
    return ", ".join(f"{tuple(t.shape)} {t.dtype}".replace("torch.", "") for t in tensors)


class _Labels:
    """Simulated device per storage. A storage's Python object lives as long as its memory
    (torch preserves it), so it is the key: by id, checked by identity, forgotten when freed."""

    def __init__(self):
        self._by_id: dict[int, tuple[str, weakref.ref]] = {}

    @staticmethod
    def _storage(t: torch.Tensor):
        try:
            with torch._C.DisableTorchFunction():  # no mode may rewrite the simulation's own calls
                return t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
            return None

    def get(self, t: torch.Tensor) -> str:
        s = self._storage(t)
        entry = None if s is None else self._by_id.get(id(s))
        return entry[0] if entry is not None and entry[1]() is s else CPU

    def set(self, t: torch.Tensor, label: str) -> None:
        s = self._storage(t)
        if s is None:
            return
        key = id(s)

        def forget(ref, key=key):
            if self._by_id.get(key, (None, None))[1] is ref:
                del self._by_id[key]

        self._by_id[key] = (label, weakref.ref(s, forget))


def _storages(tensors) -> set[int]:
    return {id(s) for s in map(_Labels._storage, tensors) if s is not None}


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]


# Ops that take tensors on two devices on a GPU too.
_CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten._copy_from.default,
                 aten._copy_from_and_resize.default, aten.set_.source_Storage,
                 aten.set_.source_Storage_storage_offset, aten.set_.source_Tensor}
# Indexing accepts CPU index tensors for a CUDA tensor (torch moves them).
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
             aten._index_put_impl_.default}
# Collectives whose tensor is the backend's own (NCCL allocates it on the GPU itself).
_NO_USER_TENSORS = {"barrier", "monitored_barrier_"}


class _Dispatch(TorchDispatchMode):
    def __init__(self, sim: "SimulatedCuda"):
        super().__init__()
        self.sim = sim

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        labels = self.sim.labels
        with torch._C.DisableTorchFunction():
            if func.namespace == "c10d":
                self.sim.check_collective(func, args, kwargs)
                return func(*args, **kwargs)
            inputs = _tensors((args, kwargs))
            label = self._op_device(func, args, inputs)
            out = func(*args, **kwargs)
            own = _storages(inputs)
            for t in _tensors(out):
                if id(labels._storage(t)) not in own:  # in-place results and views keep theirs
                    labels.set(t, label)
            return out

    def _op_device(self, func, args, inputs) -> str:
        """The device the op runs on; raises when its inputs would be on two devices."""
        labels = self.sim.labels
        if func in _CROSS_DEVICE:  # the result is where the function mode says (or in place)
            return labels.get(inputs[0]) if inputs else CPU
        checked = inputs
        if func in _INDEXING:  # CPU index tensors are fine; the indexed tensor and values decide
            cpu_indices = {id(t) for t in _tensors(args[1]) if labels.get(t) == CPU}
            checked = [t for t in inputs if id(t) not in cpu_indices]
        # A 0-dim CPU tensor may join an op on any device (torch passes it as a scalar).
        devices = {labels.get(t) for t in checked if t.dim() > 0 or labels.get(t) != CPU}
        if len(devices) > 1:
            by_device: dict[str, list] = {}
            for t in checked:
                by_device.setdefault(labels.get(t), []).append(t)
            raise DeviceMismatch(
                f"{func} mixes devices: " + "; ".join(f"{d} tensors {_describe(ts)}" for d, ts in by_device.items())
                + " (simulated CUDA: on a GPU this op fails)")
        return devices.pop() if devices else CPU


class _Function(TorchFunctionMode):
    def __init__(self, sim: "SimulatedCuda"):
        super().__init__()
        self.sim = sim
        T = torch._C.TensorBase
        self._getters = {T.device: self._device, T.is_cuda: self._is_cuda, T.is_cpu: self._is_cpu}

    def _target(self, device) -> Optional[str]:
        """The simulated device a device argument names, if it names CUDA."""
        if device is None:
            return None
        if isinstance(device, int) and not isinstance(device, bool):
            return f"cuda:{device}"
        if isinstance(device, str):
            device = torch.device(device)
        if isinstance(device, torch.device) and device.type == "cuda":
            return f"cuda:{self.sim.current if device.index is None else device.index}"
        return None

    def _device(self, t):
        return torch.device(self.sim.labels.get(t))

    def _is_cuda(self, t):
        return self.sim.labels.get(t) != CPU

    def _is_cpu(self, t):
        return self.sim.labels.get(t) == CPU

    def _move(self, t: torch.Tensor, target: str, *, dtype=None, non_blocking=False, copy=False,
              memory_format=torch.preserve_format) -> torch.Tensor:
        labels = self.sim.labels
        source = labels.get(t)
        out = t.to(CPU, dtype=dtype, non_blocking=non_blocking, copy=copy or source != target,
                   memory_format=memory_format)
        if out is not t:
            labels.set(out, target)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        labels = self.sim.labels
        if type(func) is _METHOD_WRAPPER and func.__name__ == "__get__" and func.__self__ in self._getters:
            return self._getters[func.__self__](args[0])
        T = torch.Tensor
        if func is T.to:
            if len(args) > 1 and isinstance(args[1], torch.Tensor):  # .to(other): other's device and dtype
                other = args[1]
                return self._move(args[0], labels.get(other), dtype=other.dtype, **kwargs)
            with torch._C.DisableTorchFunction():
                device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args[1:], **kwargs)
            if device is None or device.type not in (CPU, "cuda"):
                return func(*args, **kwargs)
            return self._move(args[0], self._target(device) or CPU, dtype=dtype, non_blocking=non_blocking,
                              copy=kwargs.get("copy", False), memory_format=memory_format or torch.preserve_format)
        if func is T.cuda:
            device = kwargs.get("device", args[1] if len(args) > 1 else None)
            return self._move(args[0], self._target("cuda" if device is None else device))
        if func is T.cpu:
            return self._move(args[0], CPU)
        if func is T.get_device:
            label = labels.get(args[0])
            return -1 if label == CPU else torch.device(label).index
        if func is T.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if labels.get(args[0]) != CPU else name
        if func in (T.numpy, T.__array__) and labels.get(args[0]) != CPU:
            raise DeviceMismatch(f"{func.__name__}() of a tensor on {labels.get(args[0])} "
                                 f"(shape {tuple(args[0].shape)}): move it to the CPU first")
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False  # a CPU-only build cannot pin; pinned memory is host memory
        target = self._target(kwargs.get("device"))
        if target is None:
            return func(*args, **kwargs)
        kwargs["device"] = CPU
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and id(labels._storage(out)) in _storages(_tensors(args)):
            out = out.clone()  # torch.as_tensor(cpu_tensor, device="cuda") copies on a GPU
        for t in _tensors(out) if isinstance(out, (torch.Tensor, tuple, list)) else []:
            labels.set(t, target)
        return out


class _AnyGenerator(type(torch._C.Generator)):
    def __instancecheck__(cls, obj):  # isinstance(g, torch.Generator) stays true for every generator
        return isinstance(obj, torch._C.Generator)


class _CpuGenerator(torch._C.Generator, metaclass=_AnyGenerator):
    """``torch.Generator(device="cuda")``: a CPU generator (the tensors it draws for are CPU ones)."""

    def __new__(cls, device=CPU):
        return super().__new__(cls, CPU)


class SimulatedCuda:
    """The simulation's state: labels, the current device index, each group's backend."""

    def __init__(self):
        self.labels = _Labels()
        self.current = 0
        self.backends: dict[str, str] = {}  # process group name -> "nccl" | "gloo"
        self.collectives: set[tuple[str, str, str]] = set()  # (op, group backend, device) checked

    def device_of(self, t: torch.Tensor) -> str:
        return self.labels.get(t)

    def backend_of(self, group) -> str:
        return self.backends.get(group.group_name, "gloo")

    # ---- torch.distributed ------------------------------------------------------------------
    def check_collective(self, func, args, kwargs) -> None:
        group = next((dist.ProcessGroup.unbox(a) for a in (*args, *kwargs.values())
                      if isinstance(a, torch.ScriptObject) and "ProcessGroup" in str(a)), None)
        name = func.__name__.split(".")[0]
        if group is None or name in _NO_USER_TENSORS:
            return
        backend = self.backend_of(group)
        need = f"cuda:{self.current}" if backend == "nccl" else CPU
        tensors = _tensors((args, kwargs))
        wrong = [t for t in tensors if self.labels.get(t) != need]
        self.collectives.add((name, backend, need))
        if wrong:
            devices = sorted({self.labels.get(t) for t in wrong})
            raise DeviceMismatch(
                f"c10d.{name} on a {backend.upper()} group (ranks {dist.get_process_group_ranks(group)}) got "
                f"tensors on {', '.join(devices)} ({_describe(wrong)}): a {backend.upper()} group takes "
                f"{'tensors on the current CUDA device ' + need if backend == 'nccl' else 'CPU tensors'} "
                "(simulated: this collective fails on a GPU machine)")

    def _backend_wanted(self, backend) -> str:
        if backend is None:
            return self.backends.get(dist.group.WORLD.group_name, "gloo") if dist.is_initialized() else "gloo"
        backend = str(backend).lower()
        if backend not in ("nccl", "gloo"):
            raise ValueError(f"backend {backend!r}: the simulation knows 'nccl' and 'gloo'")
        return backend

    def _init_process_group(self, real):
        def init_process_group(backend=None, *args, **kwargs):
            wanted = self._backend_wanted(backend or "nccl")
            kwargs.pop("device_id", None)
            real("gloo", *args, **kwargs)
            self.backends[dist.group.WORLD.group_name] = wanted
        return init_process_group

    def _new_group(self, real):
        def new_group(ranks=None, timeout=None, backend=None, *args, **kwargs):
            wanted = self._backend_wanted(backend)
            group = real(ranks, timeout, "gloo", *args, **kwargs)
            if isinstance(group, dist.ProcessGroup):
                self.backends[group.group_name] = wanted
            return group
        return new_group

    def _object_device(self, real):
        def _get_object_coll_device(group=None):
            group = group or dist.group.WORLD
            return "cuda" if self.backend_of(group) == "nccl" else real(group)
        return _get_object_coll_device

    # ---- torch.cuda -------------------------------------------------------------------------
    def _set_device(self, device) -> None:
        index = device if isinstance(device, int) else torch.device(device).index
        index = self.current if index is None else index
        if not 0 <= index < DEVICE_COUNT:
            raise DeviceMismatch(f"torch.cuda.set_device({device!r}): {DEVICE_COUNT} simulated devices")
        self.current = index

    def patches(self) -> dict[tuple[object, str], object]:
        cuda = torch.cuda
        return {
            (cuda, "is_available"): lambda: True,
            (cuda, "device_count"): lambda: DEVICE_COUNT,
            (cuda, "current_device"): lambda: self.current,
            (cuda, "set_device"): self._set_device,
            # No graph is ever captured. torch 2.11's optimizers ask this of torch.cuda once
            # is_available() is True (Optimizer._accelerator_graph_capture_health_check; 2.13 asks
            # torch.accelerator, which stays the CPU), and a CUDA build without a driver raises.
            (cuda, "is_current_stream_capturing"): lambda: False,
            (torch, "Generator"): _CpuGenerator,
            (dist, "init_process_group"): self._init_process_group(dist.init_process_group),
            (c10d, "init_process_group"): self._init_process_group(c10d.init_process_group),
            (dist, "new_group"): self._new_group(dist.new_group),
            (c10d, "new_group"): self._new_group(c10d.new_group),
            (c10d, "_get_object_coll_device"): self._object_device(c10d._get_object_coll_device),
        }


@contextlib.contextmanager
def simulated_cuda(megatron: bool = True) -> Iterator[SimulatedCuda]:
    """Run the body as on a CUDA machine, strictly checked; everything is restored on exit.

    ``megatron``: enable the project's CPU backend first (process-wide by design, and before
    ``is_available()`` turns True: it refuses to run on a GPU machine); tests that use neither
    Megatron-Core nor CUDA streams skip its import.
    """
    if megatron:
        from megatron_prorl import cpu_backend

        cpu_backend.enable()
    sim = SimulatedCuda()
    saved = {}
    try:
        for (owner, name), value in sim.patches().items():
            saved[owner, name] = getattr(owner, name)
            setattr(owner, name, value)
        with _Function(sim), _Dispatch(sim):
            yield sim
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
