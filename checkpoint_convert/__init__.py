"""Hugging Face <-> Megatron-Core checkpoint conversion (Qwen2 and Llama decoders).

Usable on its own: nothing here imports megatron_prorl (a test enforces it).

- :mod:`~checkpoint_convert.arch`: the HF architecture (config.json) both sides need.
- :mod:`~checkpoint_convert.mapping`: the pure name/shape/tensor mapping (HF <-> local spec, TP, PP).
- :func:`load_hf_weights`: HF weights into a live model-parallel GPTModel.
- :func:`save_model_checkpoint` / :func:`load_model_checkpoint`: this project's checkpoint
  directory (dist_checkpointing model/, hf/, meta.json, manifest.json), written atomically;
  :func:`resolve_checkpoint` finds one from a run directory; :mod:`~checkpoint_convert.manifest`
  checksums every file and verifies them before anything is read.
- :func:`hf_to_megatron` / :func:`megatron_to_hf`: the offline conversions
  (``python -m checkpoint_convert``; ``prorl-convert`` adds verification).

Names resolve on first use: a conversion imports torch but not Megatron-Core, whose import
alone would cost it seconds.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ConversionError": "errors",
    "HFArch": "arch", "hf_arch": "arch", "load_arch": "arch", "padded_vocab_size": "arch",
    "Layout": "mapping", "Param": "mapping", "hf_shapes": "mapping", "checkpoint_key": "mapping",
    "to_megatron_shard": "mapping", "from_megatron_shards": "mapping",
    "HFWeights": "safetensors_io", "SafetensorsWriter": "safetensors_io",
    "load_hf_weights": "model_weights",
    "CheckpointMeta": "checkpoint", "atomic_directory": "checkpoint", "read_meta": "checkpoint",
    "save_model_state": "checkpoint", "save_model_checkpoint": "checkpoint", "load_model_checkpoint": "checkpoint",
    "save_sharded_state": "checkpoint", "load_model_state": "checkpoint", "copy_hf_metadata": "checkpoint",
    "write_meta": "checkpoint", "resolve_checkpoint": "checkpoint", "verify_checkpoint": "checkpoint",
    "CheckpointDamaged": "manifest", "write_manifest": "manifest", "verify_manifest": "manifest",
    "hf_to_megatron": "convert", "megatron_to_hf": "convert", "Summary": "convert",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
