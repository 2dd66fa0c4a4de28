"""Megatron-Core GPT models from a Hugging Face config.json (Qwen2 and Llama families).

``hf_arch(config)`` reads the few architecture facts both the model builder and the checkpoint
converter need, rejecting unsupported features by field name; ``build_gpt_model`` turns them
into a TransformerConfig plus a layer spec (Transformer Engine when present, local otherwise)
for the pipeline stage this rank holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from megatron_prorl import builtin, device
from megatron_prorl.config import ConfigError, ModelConfig, ParallelConfig, resolve_transformer_impl

# Megatron pads the vocabulary so every TP shard has the same, GEMM-friendly width.
VOCAB_DIVISIBLE_BY = 128

# Our dtype names (configs, checkpoints, prorl-convert --dtype).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_hf_dir(hf_dir: str) -> Path:
    """A HF directory path, or "builtin:NAME" for a model shipped in megatron_prorl/assets."""
    path = builtin.resolve(hf_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.hf_dir={hf_dir!r}: no config.json in {path}")
    return path


def load_hf_config(hf_dir: str) -> dict:
    path = resolve_hf_dir(hf_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def hf_arch(cfg: dict, source: str = "config.json") -> HFArch:
    """Validate a HF config and extract its architecture; errors name the offending field."""

    def need(key):
        if key not in cfg:
            raise ConfigError(f"{source}: missing field '{key}'")
        return cfg[key]

    model_type = cfg.get("model_type") or ""
    if model_type not in ("qwen2", "llama"):
        archs = cfg.get("architectures")
        raise ConfigError(f"{source}: model_type={model_type!r} (architectures={archs}) is not supported; "
                          "supported: 'qwen2' (Qwen2ForCausalLM), 'llama' (LlamaForCausalLM)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act={cfg['hidden_act']!r} is not supported (only 'silu')")
    if cfg.get("mlp_bias"):
        raise ConfigError(f"{source}: mlp_bias=true is not supported")
    if cfg.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window=true is not supported")
    if model_type == "llama" and cfg.get("attention_bias"):
        raise ConfigError(f"{source}: attention_bias=true is not supported for llama "
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
        raise ConfigError(f"{source}: rope_scaling.rope_type={kind!r} is not supported (only 'llama3')")
    return (float(rs["factor"]), float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0)),
            int(rs.get("original_max_position_embeddings", 8192)))


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    multiple = VOCAB_DIVISIBLE_BY * tp
    return -(-vocab_size // multiple) * multiple


def resolve_dtype(model: ModelConfig) -> torch.dtype:
    if model.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return DTYPES[model.dtype]


def transformer_config(arch: HFArch, model: ModelConfig, parallel: ParallelConfig):
    from megatron.core.transformer import TransformerConfig

    dtype = resolve_dtype(model)
    on_gpu = torch.cuda.is_available()
    kwargs = {}
    if model.fp8 is not None:
        kwargs.update(fp8=model.fp8, fp8_recipe=model.fp8_recipe)
    if model.recompute_activations:
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        bias_activation_fusion=False,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not on_gpu,
        perform_initialization=True,
        masked_softmax_fusion=on_gpu,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        # Losses come pre-normalised by the global token/sequence count (see actor), so the
        # schedule must not divide by the micro-batch count nor DDP by the DP size.
        calculate_per_token_loss=True,
        **kwargs,
    )


def layer_spec(model: ModelConfig):
    from megatron.core.models.gpt import gpt_layer_specs

    if resolve_transformer_impl(model) == "transformer_engine":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def build_gpt_model(arch: HFArch, model: ModelConfig, parallel: ParallelConfig, max_sequence_length: Optional[int] = None):
    """The GPTModel for this rank's pipeline stage (parallel state must be initialised)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    config = transformer_config(arch, model, parallel)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model),
        vocab_size=padded_vocab_size(arch.vocab_size, parallel.tensor_model_parallel_size),
        max_sequence_length=max_sequence_length or arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(arch.rope_theta),
    )
    if arch.rope_scaling is not None:
        # GPTModel only takes the factor; apply HF's full llama3 parameters ourselves.
        factor, low, high, orig = arch.rope_scaling
        rope = gpt.rotary_pos_emb
        rope.inv_freq = rope._apply_scaling(rope.inv_freq, factor=factor, low_freq_factor=low,
                                            high_freq_factor=high, original_max_position_embeddings=orig)
    return gpt.to(device.current())
