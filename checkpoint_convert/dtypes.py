"""The dtype names of configs, checkpoints and ``prorl-convert --dtype``.

Torch is imported only when a name is turned into a dtype, so a command line can offer the
names (``--help``, usage errors) without paying for torch's import.
"""

from __future__ import annotations

from checkpoint_convert.errors import ConversionError

NAMES = ("fp32", "bf16", "fp16")
_TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def to_torch(name: str, what: str = "dtype"):
    """The torch dtype called ``name``; ``what`` names the setting in the error."""
    import torch

    if name not in _TORCH_NAMES:
        raise ConversionError(f"{what}={name!r}: expected one of {', '.join(NAMES)}")
    return getattr(torch, _TORCH_NAMES[name])


def name_of(dtype) -> str:
    """The name of a torch dtype (the inverse of :func:`to_torch`)."""
    for name, torch_name in _TORCH_NAMES.items():
        if str(dtype) == f"torch.{torch_name}":
            return name
    raise ConversionError(f"dtype {dtype} is not one of {', '.join(NAMES)}")
