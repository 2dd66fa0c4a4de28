"""The architecture of a Hugging Face decoder, as the conversion and the Megatron model need it.

:func:`hf_arch` reads the few facts of a ``config.json`` that decide the Megatron model and
its parameter mapping (Qwen2 and Llama families), rejecting unsupported features by field name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from checkpoint_convert.errors import ConversionError

# Megatron pads the vocabulary so every TP shard has the same, GEMM-friendly width.
VOCAB_DIVISIBLE_BY = 128


@dataclass(frozen=True)
class HFArch:
    """What we need to know of a HF decoder to build or convert it."""

    family: str  # "qwen2" or "llama"
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    norm_eps: float
    rope_theta: float
    qkv_bias: bool
    tie_embeddings: bool
    # Llama-3 style rope scaling, as (factor, low_freq_factor, high_freq_factor, original_max_pos).
    rope_scaling: Optional[tuple[float, float, float, int]] = None
    torch_dtype: str = "float32"


def read_hf_config(hf_dir: os.PathLike) -> dict:
    """config.json of a Hugging Face directory."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None


def load_arch(hf_dir: os.PathLike) -> HFArch:
    """The architecture of the Hugging Face directory ``hf_dir``."""
    return hf_arch(read_hf_config(hf_dir), source=str(Path(hf_dir) / "config.json"))


def hf_arch(cfg: dict, source: str = "config.json") -> HFArch:
    """Validate a HF config and extract its architecture; errors name the offending field."""

    def need(key):
        if key not in cfg:
            raise ConversionError(f"{source}: missing field '{key}'")
        return cfg[key]

    model_type = cfg.get("model_type") or ""
    if model_type not in ("qwen2", "llama"):
        archs = cfg.get("architectures")
        raise ConversionError(f"{source}: model_type={model_type!r} (architectures={archs}) is not supported; "
                              "supported: 'qwen2' (Qwen2ForCausalLM), 'llama' (LlamaForCausalLM)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{source}: hidden_act={cfg['hidden_act']!r} is not supported (only 'silu')")
    if cfg.get("mlp_bias"):
        raise ConversionError(f"{source}: mlp_bias=true is not supported")
    if cfg.get("use_sliding_window"):
        raise ConversionError(f"{source}: use_sliding_window=true is not supported")
    if model_type == "llama" and cfg.get("attention_bias"):
        raise ConversionError(f"{source}: attention_bias=true is not supported for llama "
                              "(it also adds an o_proj bias, which the Megatron model lacks)")
    heads = need("num_attention_heads")
    hidden = need("hidden_size")
    # transformers >= 5 writes rope_theta and the scaling into one "rope_parameters" dict.
    rope = cfg.get("rope_parameters") or {}
    rope_scaling = _rope_scaling(cfg.get("rope_scaling") or rope, source)
    return HFArch(
        family=model_type,
        num_layers=need("num_hidden_layers"),
        hidden_size=hidden,
        ffn_hidden_size=need("intermediate_size"),
        num_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        vocab_size=need("vocab_size"),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        qkv_bias=True if model_type == "qwen2" else bool(cfg.get("attention_bias", False)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling,
        torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
    )


def _rope_scaling(rs: Optional[dict], source: str):
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ConversionError(f"{source}: rope_scaling.rope_type={kind!r} is not supported (only 'llama3')")
    return (float(rs["factor"]), float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0)),
            int(rs.get("original_max_position_embeddings", 8192)))


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    multiple = VOCAB_DIVISIBLE_BY * tp
    return -(-vocab_size // multiple) * multiple
