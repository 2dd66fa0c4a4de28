"""Megatron-Core on CPU (torch.distributed with gloo).

Megatron-Core has no supported CPU path: it asks for CUDA devices, streams and RNG states in
many places. :func:`enable` removes exactly the obstacles measured on megatron-core 0.16-0.19
(see shared notes "megatron-core-on-cpu"), and nothing else:

1. the model-parallel RNG tracker is rebuilt on the CPU generator (same add/fork/get/set contract);
2. ``torch.cuda.current_device`` returns the CPU device, ``synchronize`` and streams are no-ops;
3. a TorchFunctionMode rewrites ``device="cuda"`` to CPU and makes ``Tensor.cuda()`` the identity,
   for the few places that hard-code CUDA (pipeline schedules, optimizer, grad scaler);
4. gradient clipping is replaced by a device-agnostic version (Megatron's asserts CUDA grads);
5. 0.19's unconditional import of a triton kernel module gets an empty stand-in;
6. activation recomputation (tensor_parallel/random.py CheckpointFunction): it saves and
   restores the "CUDA" RNG state, which on CPU is the CPU generator's that it already saves, so
   the CUDA halves do nothing; and its backward, which the autograd engine runs without the
   TorchFunctionModes active at the forward (3. above, and tests' simulated device), re-enters
   them around the recomputed forward (which creates tensors with device="cuda").

It is a no-op when CUDA is available, so the same code runs unchanged on GPUs.
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings
from typing import Iterable, Union

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_CPU = torch.device("cpu")


def is_enabled() -> bool:
    return _ENABLED


class CpuRNGStatesTracker:
    """Megatron's CudaRNGStatesTracker contract on the CPU generator: named states that
    ``fork()`` swaps in (so TP ranks draw different dropout masks) and restores after."""

    def __init__(self, *args, **kwargs):
        self.reset()

    def reset(self):
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_states(self) -> dict:
        return dict(self.states_)

    def set_states(self, states: dict) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise RuntimeError(f"rng seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


class _CudaToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch call made while active."""

    @staticmethod
    def _fix(value):
        if isinstance(value, torch.device):
            return _CPU if value.type == "cuda" else value
        if isinstance(value, str) and value.startswith("cuda"):
            return _CPU
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = self._fix(kwargs["device"])
        if func is torch.Tensor.to:
            args = tuple(self._fix(a) for a in args)
        return func(*args, **kwargs)


class _NoStream:
    """Stands in for torch.cuda streams and events: every call does nothing."""

    def __getattr__(self, name):
        return lambda *a, **k: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _clip_grad_by_total_norm(parameters: Union[Iterable[torch.Tensor], torch.Tensor], max_norm: float,
                             total_norm: float, use_decoupled_grad: bool = False) -> None:
    """Device-agnostic stand-in for Megatron's clip_grad_by_total_norm_fp32."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr) for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


def _recompute_under_forward_modes(fn: type) -> None:
    forward, backward = fn.forward, fn.backward

    def forward_keeping_modes(ctx, *args):
        ctx.function_modes = torch.overrides._get_current_function_mode_stack()
        return forward(ctx, *args)

    def backward_under_modes(ctx, *grads):
        with contextlib.ExitStack() as stack:
            for mode in ctx.function_modes:
                stack.enter_context(mode)
            return backward(ctx, *grads)

    fn.forward, fn.backward = staticmethod(forward_keeping_modes), staticmethod(backward_under_modes)


def _install_triton_stand_in() -> None:
    # megatron-core 0.19 imports a triton kernel module from pipeline_parallel.schedules; a fake
    # top-level `triton` would break torch._inductor, so only that module gets a stand-in.
    name = "megatron.core.transformer.moe.ops.paged_stash"
    try:
        import importlib

        importlib.import_module(name)
    except Exception:
        sys.modules[name] = types.ModuleType(name)


# Megatron-Core announces on import that it falls back to torch kernels without TE/Apex: on a
# CPU that is the expected path, so the notices are silenced here (and only here).
_EXPECTED_ON_CPU = ("Transformer Engine and Apex are not installed", "Apex is not installed",
                    "full scope is deprecated")


def enable() -> bool:
    """Activate the CPU backend for this process. Returns True when it is active (no CUDA)."""
    global _ENABLED
    if _ENABLED:
        return True
    if torch.cuda.is_available():
        return False
    for message in _EXPECTED_ON_CPU:
        warnings.filterwarnings("ignore", message=message)
    _install_triton_stand_in()

    torch.cuda.current_device = lambda: _CPU
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_stream = lambda *a, **k: _NoStream()
    torch.cuda.default_stream = lambda *a, **k: _NoStream()
    torch.cuda.empty_cache = lambda: None

    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import random as mp_random

    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mp_random.initialize_rng_tracker = lambda *a, **k: None
    mp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda *a, **k: None
    _recompute_under_forward_modes(mp_random.CheckpointFunction)
    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm

    _CudaToCpu().__enter__()  # stays active for the life of the process
    _ENABLED = True
    return True
