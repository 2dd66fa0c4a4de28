"""What this machine offers: CUDA, Transformer Engine, TensorRT-LLM.

The GPU-only packages come from the NGC PyTorch container and are never imported unless a
config asks for them; these helpers turn their absence into one sentence naming what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

import torch

from megatron_prorl.config import ConfigError, ModelConfig, ParallelConfig


def has_cuda() -> bool:
    return torch.cuda.is_available()


@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    try:  # TE's import fails without CUDA libraries even when the package is installed.
        importlib.import_module(module)
    except Exception:
        return False
    return True


def missing_for_transformer_engine() -> str:
    """Empty when TE can be used, else what is missing."""
    if not has_cuda():
        return "a CUDA GPU (torch.cuda.is_available() is False)"
    if not _importable("transformer_engine.pytorch"):
        return ("the 'transformer_engine' package (in the NGC PyTorch container, or "
                "`pip install 'megatron-prorl[gpu]'`)")
    return ""


def missing_for_fp8() -> str:
    """Empty when Transformer Engine can run FP8 here (the delayed and tensorwise recipes need
    compute capability >= 8.9), else what is missing."""
    if missing := missing_for_transformer_engine():
        return missing
    # The module megatron-core imports it from (fp8_utils.py, the same in 0.16.1 and in 0.17.0, the
    # image's); is_fp8_available() returns (ok, reason) in TE 1.x (transformer_engine/pytorch/fp8.py)
    # and 2.x (quantization.py).
    from transformer_engine.pytorch.fp8 import FP8GlobalStateManager

    ok, reason = FP8GlobalStateManager.is_fp8_available()
    return "" if ok else f"FP8 support on {torch.cuda.get_device_name()} ({reason})"


def missing_for_tensorrt_llm() -> str:
    """Empty when TensorRT-LLM can be used, else what is missing. Looked up without importing:
    its import initialises MPI, which the adapter does only in a scrubbed environment."""
    if not has_cuda():
        return "a CUDA GPU (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("tensorrt_llm") is None:
        return "the 'tensorrt_llm' package (it ships in NVIDIA's containers; it is not on PyPI)"
    return ""


# Transformer Engine versions and GPUs each FP8 recipe needs: megatron-core 0.16.1 and 0.17.0 (the
# same file), megatron/core/fp8_utils.py get_fp8_recipe (tensorwise: TE >= 2.2.0.dev0, blockwise:
# >= 2.3.0.dev0, mxfp8: >= 2.1.0; older TE only builds the delayed recipe) and TE's own FP8 support (compute
# capability 8.9 (Ada) / 9.0 (Hopper) and up; MXFP8 is Blackwell's, 10.0).
FP8_RECIPE_MIN_TE = {"delayed": "1.0", "mxfp8": "2.1.0", "tensorwise": "2.2.0.dev0", "blockwise": "2.3.0.dev0"}
FP8_MIN_CAPABILITY = {"mxfp8": (10, 0)}
FP8_ANY_MIN_CAPABILITY = (8, 9)


def fp8_recipe_problem(recipe: str, te_version: str, capability: tuple[int, int]) -> str:
    """Why FP8 ``recipe`` cannot run with Transformer Engine ``te_version`` on a GPU of compute
    ``capability`` (empty when it can)."""
    from packaging.version import Version

    need = FP8_RECIPE_MIN_TE[recipe]
    if Version(te_version) < Version(need):
        return f"the {recipe!r} FP8 recipe needs Transformer Engine >= {need}; this one is {te_version}"
    min_cc = FP8_MIN_CAPABILITY.get(recipe, FP8_ANY_MIN_CAPABILITY)
    if tuple(capability) < min_cc:
        return (f"the {recipe!r} FP8 recipe needs a GPU of compute capability >= {min_cc[0]}.{min_cc[1]}; this one "
                f"is {capability[0]}.{capability[1]}")
    return ""


def transformer_engine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("transformer_engine", "transformer-engine", "transformer_engine_torch"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    import transformer_engine

    return transformer_engine.__version__


def has_apex_softmax() -> bool:
    """Apex's fused masked-softmax kernel (megatron-core 0.16.1 and 0.17.0 fusions/fused_softmax.py
    import ``scaled_masked_softmax_cuda`` when the local spec's masked_softmax_fusion is on)."""
    return importlib.util.find_spec("scaled_masked_softmax_cuda") is not None


def resolve_transformer_impl(m: ModelConfig) -> str:
    """``model.transformer_impl``, with "auto" decided by what this machine offers."""
    if m.transformer_impl != "auto":
        return m.transformer_impl
    return "transformer_engine" if not missing_for_transformer_engine() else "local"


def check_config(m: ModelConfig, p: ParallelConfig) -> None:
    """What the model section asks of this machine: Transformer Engine, FP8 and its recipe,
    sequence parallelism (which the local spec's torch norms cannot do)."""
    if m.transformer_impl == "transformer_engine" or m.fp8 is not None:
        missing = missing_for_transformer_engine()
        if missing:
            what = "model.fp8=" + repr(m.fp8) if m.fp8 is not None else "model.transformer_impl='transformer_engine'"
            raise ConfigError(f"{what} needs {missing}")
    if m.fp8 is not None:
        problem = fp8_recipe_problem(m.fp8_recipe, transformer_engine_version(), torch.cuda.get_device_capability())
        if problem:
            raise ConfigError(f"model.fp8_recipe={m.fp8_recipe!r}: {problem}")
    if p.sequence_parallel and resolve_transformer_impl(m) == "local":
        raise ConfigError(
            "parallel.sequence_parallel=true is not supported by the local layer spec "
            "(torch norms); it needs model.transformer_impl='transformer_engine'")
