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
  ``torch.Generator(device="cuda")`` is a CPU generator;
- memory as torch's caching allocator holds it: each simulated device has
  :data:`DEVICE_MEMORY` bytes, of which the storages labelled with it are allocated, and blocks
  freed since the last ``torch.cuda.empty_cache()`` stay reserved (cached: still taken, as seen
  by another process on a GPU) until new allocations reuse them; ``torch.cuda.mem_get_info()``
  reports what is left, ``memory_allocated`` / ``memory_reserved`` and their peaks what is taken.
  A storage counts with its size when it was labelled.

Labels are kept per storage (``untyped_storage()``), not per tensor object, so
views, ``param.data = ...`` swaps (``Module.to``) and Megatron's parameter buffers keep them.
Tensors the modes never saw created (``torch.from_numpy``, unpickled ones) count as CPU tensors.
Memory tests read the same books directly (``allocated``, ``max_allocated``, ``reset_peak``).

Why not the alternatives (torch 2.13.0+cpu, tried): FakeTensorMode with a "cuda" device aborts in
C++ on the first linear layer; the "meta" device has no data (sampling, rewards and ``.item()``
cannot run) and accepts CPU indices into embeddings, the very crash this must catch.

Megatron-Core's own CPU obstacles (RNG tracker, gradient clipping) are removed, and streams and
synchronisation stood in for, by ``megatron_prorl.runtime.cpu_backend``, which is enabled first: the
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
DEVICE_MEMORY = 81559 << 20  # each device's total, as torch.cuda.mem_get_info reports an H100 80GB's

aten = torch.ops.aten
_METHOD_WRAPPER = type(torch._C.TensorBase.device.__get__)


class DeviceMismatch(RuntimeError):
    """An operation that would fail on a GPU machine: tensors on two devices, or a collective
    given tensors its backend cannot take."""


def _describe(tensors) -> str:
    return ", ".join(f"{tuple(t.shape)} {t.dtype}".replace("torch.", "") for t in tensors)


class _Labels:
    """Simulated device per storage. A storage's Python object lives as long as its memory
    (torch preserves it), so it is the key: by id, checked by identity, forgotten when freed.

    It also keeps the books of torch's caching allocator, per device: every labelled storage's size
    counts as allocated (``live``) until the storage is freed (or resized, see :meth:`refresh`),
    with its peak, as ``torch.cuda.memory_allocated`` / ``max_memory_allocated`` count on a GPU
    (without the rounding to 512-byte blocks); ``reserved`` is what the allocator holds: a freed
    block stays reserved (cached) and is reused by later allocations, until ``empty_cache``.
    """

    def __init__(self):
        self._by_id: dict[int, tuple[str, weakref.ref, int]] = {}
        self.live: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.peak_reserved: dict[str, int] = {}

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

    def _count(self, label: str, nbytes: int) -> None:
        if label == CPU:
            return
        live = self.live[label] = self.live.get(label, 0) + nbytes
        if live > self.peak.get(label, 0):
            self.peak[label] = live
        if label != CPU and live > self.reserved.get(label, 0):  # cached blocks are used first
            self.reserved[label] = live
            self.peak_reserved[label] = max(live, self.peak_reserved.get(label, 0))

    def set(self, t: torch.Tensor, label: str) -> None:
        s = self._storage(t)
        if s is None:
            return
        key = id(s)
        old = self._by_id.get(key)
        if old is not None and old[1]() is s:  # relabelled: its bytes move
            self._count(old[0], -old[2])

        def forget(ref, key=key):
            entry = self._by_id.get(key)
            if entry is not None and entry[1] is ref:
                del self._by_id[key]
                self._count(entry[0], -entry[2])

        nbytes = s.nbytes()
        self._by_id[key] = (label, weakref.ref(s, forget), nbytes)
        self._count(label, nbytes)

    def refresh(self, t: torch.Tensor) -> None:
        """Recount a storage an in-place op may have resized (``resize_``, ``set_``)."""
        s = self._storage(t)
        entry = None if s is None else self._by_id.get(id(s))
        if entry is not None and entry[1]() is s and s.nbytes() != entry[2]:
            self._by_id[id(s)] = (entry[0], entry[1], s.nbytes())
            self._count(entry[0], s.nbytes() - entry[2])

    def reset_peak(self) -> None:
        self.peak = dict(self.live)
        self.peak_reserved = dict(self.reserved)

    def empty_cache(self) -> None:
        """The cached blocks go back to the device: reserved is what is allocated."""
        self.reserved = {label: n for label, n in self.live.items() if label != CPU}


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
                else:
                    labels.refresh(t)
            return out

    def _op_device(self, func, args, inputs) -> str:
        """The device the op runs on; raises when its inputs would be on two devices."""
        labels = self.sim.labels
        if func in _CROSS_DEVICE:  # the result is where the function mode says (or in place)
            if self.sim.move_target is not None:  # a device move: the copy is born there
                return self.sim.move_target
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
        self.sim.move_target = target
        try:
            out = t.to(CPU, dtype=dtype, non_blocking=non_blocking, copy=copy or source != target,
                       memory_format=memory_format)
        finally:
            self.sim.move_target = None
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

    def __init__(self, memory: int = DEVICE_MEMORY):
        self.labels = _Labels()
        self.memory = memory
        self.current = 0
        self.backends: dict[str, str] = {}  # process group name -> "nccl" | "gloo"
        self.collectives: set[tuple[str, str, str]] = set()  # (op, group backend, device) checked
        self.log: list[tuple[str, ...]] = []  # (op, group backend) of every collective, in order
        self.move_target: Optional[str] = None  # while a device move copies: where the copy goes

    def device_of(self, t: torch.Tensor) -> str:
        return self.labels.get(t)

    # ---- memory -----------------------------------------------------------------------------
    def allocated(self, device: str) -> int:
        """Bytes of live storages on ``device`` (e.g. "cuda:0"): torch.cuda.memory_allocated."""
        return self.labels.live.get(device, 0)

    def max_allocated(self, device: str) -> int:
        """The most bytes live on ``device`` since the last :meth:`reset_peak` (or the start)."""
        return self.labels.peak.get(device, 0)

    def reset_peak(self) -> None:
        """Start each device's peak afresh from its live bytes (torch.cuda.reset_peak_memory_stats)."""
        self.labels.reset_peak()

    def backend_of(self, group) -> str:
        return self.backends.get(group.group_name, "gloo")

    # ---- torch.distributed ------------------------------------------------------------------
    def check_collective(self, func, args, kwargs) -> None:
        group = next((dist.ProcessGroup.unbox(a) for a in (*args, *kwargs.values())
                      if isinstance(a, torch.ScriptObject) and "ProcessGroup" in str(a)), None)
        name = func.__name__.split(".")[0]
        if group is None:
            return
        backend = self.backend_of(group)
        self.log.append((name, backend))
        if name in _NO_USER_TENSORS:
            return
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

    def _mem_get_info(self, device=None) -> tuple[int, int]:
        """(free, total): the total less what the caching allocator holds on that device."""
        index = self.current if device is None else (device if isinstance(device, int) else torch.device(device).index)
        return self.memory - self.labels.reserved.get(f"cuda:{self.current if index is None else index}", 0), self.memory

    def patches(self) -> dict[tuple[object, str], object]:
        cuda = torch.cuda
        here = lambda *a, **k: f"cuda:{self.current}"  # noqa: E731
        return {
            (cuda, "mem_get_info"): self._mem_get_info,
            (cuda, "empty_cache"): self.labels.empty_cache,
            (cuda, "memory_allocated"): lambda *a, **k: self.allocated(here()),
            (cuda, "max_memory_allocated"): lambda *a, **k: self.max_allocated(here()),
            (cuda, "memory_reserved"): lambda *a, **k: self.labels.reserved.get(here(), 0),
            (cuda, "max_memory_reserved"): lambda *a, **k: self.labels.peak_reserved.get(here(), 0),
            (cuda, "reset_peak_memory_stats"): lambda *a, **k: self.reset_peak(),
            (cuda, "get_device_name"): lambda *a, **k: "simulated CUDA device",
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
def simulated_cuda(megatron: bool = True, memory: int = DEVICE_MEMORY) -> Iterator[SimulatedCuda]:
    """Run the body as on a CUDA machine, strictly checked; everything is restored on exit.

    ``megatron``: enable the project's CPU backend first (process-wide by design, and before
    ``is_available()`` turns True: it refuses to run on a GPU machine); tests that use neither
    Megatron-Core nor CUDA streams skip its import. ``memory``: each device's total bytes
    (``torch.cuda.mem_get_info``: free is the total less the device's live tensors).
    """
    if megatron:
        from megatron_prorl.runtime import cpu_backend

        cpu_backend.enable()
    sim = SimulatedCuda(memory)
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
