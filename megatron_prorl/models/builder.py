"""Megatron-Core GPT models from a Hugging Face config.json (Qwen2 and Llama families).

:func:`build_gpt_model` turns the architecture the converter reads
(:class:`checkpoint_convert.arch.HFArch`) into a TransformerConfig plus a layer spec
(Transformer Engine when present, local otherwise) for the pipeline stage this rank holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from checkpoint_convert import dtypes
from checkpoint_convert.arch import HFArch, padded_vocab_size
from megatron_prorl import builtin
from megatron_prorl.config import ConfigError, ModelConfig, ParallelConfig, choice
from megatron_prorl.runtime import accelerator, device
from megatron_prorl.runtime.accelerator import resolve_transformer_impl


def resolve_hf_dir(hf_dir: str) -> Path:
    """A HF directory path, or "builtin:NAME" for a model shipped in megatron_prorl/assets."""
    path = builtin.resolve(hf_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.hf_dir={hf_dir!r}: no config.json in {path}")
    return path


def resolve_dtype(model: ModelConfig) -> torch.dtype:
    if model.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return dtypes.to_torch(model.dtype, "model.dtype")


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
        # The local spec's fused softmax is an Apex kernel: without Apex it would fail to import.
        masked_softmax_fusion=on_gpu and accelerator.has_apex_softmax(),
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
    from megatron_prorl.models.attention import PackedDotProductAttention

    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    # The local attention refuses packed rows; this one runs them sequence by sequence.
    spec.submodules.self_attention.submodules.core_attention = PackedDotProductAttention
    return spec


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


def check_config(model: ModelConfig, parallel: ParallelConfig, hf_config: Optional[dict] = None) -> None:
    """The model's dtype, and (given its config.json) whether TP and PP divide its shape."""
    choice("model.dtype", model.dtype, ("auto", *dtypes.NAMES))
    if hf_config is None:
        return
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    heads = hf_config["num_attention_heads"]
    groups = hf_config.get("num_key_value_heads") or heads
    layers = hf_config["num_hidden_layers"]
    if heads % tp:
        raise ConfigError(
            f"parallel.tensor_model_parallel_size={tp} does not divide num_attention_heads={heads}")
    if groups % tp:
        raise ConfigError(
            f"parallel.tensor_model_parallel_size={tp} does not divide num_key_value_heads "
            f"(query groups)={groups}")
    if layers % pp:
        raise ConfigError(
            f"parallel.pipeline_model_parallel_size={pp} does not divide num_hidden_layers={layers}")
