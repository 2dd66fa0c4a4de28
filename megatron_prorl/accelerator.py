"""What this machine offers: CUDA, Transformer Engine, TensorRT-LLM.

The GPU-only packages come from the NGC PyTorch container and are never imported unless a
config asks for them; these helpers turn their absence into one sentence naming what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

import torch


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


def missing_for_tensorrt_llm() -> str:
    """Empty when TensorRT-LLM can be used, else what is missing. Looked up without importing:
    its import initialises MPI, which the adapter does only in a scrubbed environment."""
    if not has_cuda():
        return "a CUDA GPU (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("tensorrt_llm") is None:
        return "the 'tensorrt_llm' package (it ships in NVIDIA's containers; it is not on PyPI)"
    return ""
