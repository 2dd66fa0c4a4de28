"""Hugging Face <-> Megatron-Core checkpoint conversion (Qwen2 and Llama decoders).

- :mod:`~checkpoint_convert.mapping`: the pure name/shape/tensor mapping (HF <-> local spec, TP, PP).
- :func:`load_hf_weights` / :func:`export_hf_weights`: HF weights into a live model-parallel
  GPTModel, and out of it in buckets (the weight sync's source).
- :func:`save_model_checkpoint` / :func:`load_model_checkpoint`: this project's checkpoint
  directory (dist_checkpointing model/, hf/, meta.json), written atomically.
- :func:`hf_to_megatron` / :func:`megatron_to_hf` / :func:`max_logit_diff`: the offline
  conversions behind the ``prorl-convert`` command.

Names resolve on first use: a ``prorl-convert`` conversion imports torch but not
Megatron-Core, whose import alone would cost it seconds.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ConversionError": "errors",
    "Layout": "mapping", "Param": "mapping", "hf_shapes": "mapping", "checkpoint_key": "mapping",
    "to_megatron_shard": "mapping", "from_megatron_shards": "mapping",
    "HFWeights": "safetensors_io", "SafetensorsWriter": "safetensors_io",
    "load_hf_weights": "model_weights", "export_hf_weights": "model_weights",
    "CheckpointMeta": "checkpoint", "atomic_directory": "checkpoint", "read_meta": "checkpoint",
    "save_model_state": "checkpoint", "save_model_checkpoint": "checkpoint", "load_model_checkpoint": "checkpoint",
    "save_sharded_state": "checkpoint", "load_model_state": "checkpoint", "copy_hf_metadata": "checkpoint",
    "write_meta": "checkpoint", "dtype_name": "checkpoint",
    "hf_to_megatron": "convert", "megatron_to_hf": "convert", "Summary": "convert",
    "max_logit_diff": "verify",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
