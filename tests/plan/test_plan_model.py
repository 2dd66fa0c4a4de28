"""The memory model's pure formulas: Megatron-LM's own weight-and-optimizer formula transcribed
and compared, TensorRT-LLM's KV sizing, the knobs of the long-sequence work, no torch at import."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from megatron_prorl.plan import memory as M

# DeepSeek-R1-Distill-Qwen-1.5B (configs/models/deepseek-r1-distill-qwen-1.5b.json).
R1_1P5B = M.Shape(layers=28, hidden=1536, ffn=8960, heads=12, kv_heads=2, head_dim=128, vocab=151936,
                  tied=False, qkv_bias=True)
LLAMA_LIKE = M.Shape(layers=4, hidden=256, ffn=704, heads=8, kv_heads=2, head_dim=32, vocab=1000, tied=False,
                     qkv_bias=False)


def megatron_weight_and_optimizer_memory(args) -> float:
    """Megatron-LM core_v0.16.1 megatron/training/theoretical_memory_usage.py,
    compute_weight_and_optimizer_memory, transcribed for dense GPT layers (no MoE, MTP or MLA)."""
    query_projection_size = args.kv_channels * args.num_attention_heads
    query_projection_to_hidden_size_ratio = query_projection_size / args.hidden_size
    gated_linear_multiplier = 3 / 2 if args.swiglu else 1
    norm_size = 1 if args.normalization == "RMSNorm" else 2
    self_attn_term = (2 * args.hidden_size * args.hidden_size
                      * ((1 + (args.num_query_groups / args.num_attention_heads)) * query_projection_to_hidden_size_ratio))
    num_parameters_in_transformer_layer_dense = (
        2 * args.hidden_size * ((args.ffn_hidden_size * gated_linear_multiplier) + norm_size) + self_attn_term)
    embedding_size = args.hidden_size * args.padded_vocab_size
    final_layernorm = norm_size * args.hidden_size
    num_parameters_in_transformer_block = num_parameters_in_transformer_layer_dense * args.num_layers + final_layernorm
    num_parameters_on_most_loaded_model_shard = (
        (num_parameters_in_transformer_block / args.pipeline_model_parallel_size) + embedding_size
    ) / args.tensor_model_parallel_size
    if args.untie_embeddings_and_output_weights and args.pipeline_model_parallel_size == 1:
        num_parameters_on_most_loaded_model_shard += embedding_size / args.tensor_model_parallel_size
    num_bytes_per_parameter = 18 if not args.use_distributed_optimizer else 6 + (12 / args.data_parallel_size)
    return num_parameters_on_most_loaded_model_shard * num_bytes_per_parameter


def _megatron_args(s: M.Shape, tp: int, dp: int, distributed: bool):
    return SimpleNamespace(kv_channels=s.head_dim, num_attention_heads=s.heads, hidden_size=s.hidden,
                           num_query_groups=s.kv_heads, swiglu=True, normalization="RMSNorm",
                           ffn_hidden_size=s.ffn, num_layers=s.layers, padded_vocab_size=M.padded_vocab(s.vocab, tp),
                           pipeline_model_parallel_size=1, tensor_model_parallel_size=tp,
                           untie_embeddings_and_output_weights=not s.tied, use_distributed_optimizer=distributed,
                           data_parallel_size=dp)


def _ours(s: M.Shape, tp: int, dp: int, distributed: bool) -> int:
    params = M.rank_params(s, tp, 1)
    return (M.weights_bytes(params, 2) + M.grad_buffer_bytes(params) + M.main_params_bytes(params, 2, dp, distributed)
            + M.adam_bytes(params, dp, distributed))


@pytest.mark.parametrize("distributed, dp", [(False, 1), (True, 1), (True, 4), (True, 16)])
def test_weights_and_optimizer_equal_megatrons_theoretical_memory(distributed, dp):
    """bf16 weights + fp32 gradients + fp32 master weights + Adam = Megatron's 18 (or 6 + 12/dp)
    bytes per parameter, on the same parameter count (TP 1, no QKV bias: Megatron's count has none)."""
    ours = _ours(LLAMA_LIKE, 1, dp, distributed)
    assert ours == pytest.approx(megatron_weight_and_optimizer_memory(_megatron_args(LLAMA_LIKE, 1, dp, distributed)),
                                 rel=1e-12)


def test_where_our_count_departs_from_megatrons_and_why():
    """Qwen2's QKV bias, which Megatron's formula leaves out, and at TP > 1 the norm weights, which
    every TP rank holds whole while the formula divides them by TP: exactly those differences."""
    s, per = R1_1P5B, 18
    bias = s.layers * (s.heads + 2 * s.kv_heads) * s.head_dim
    assert _ours(s, 1, 1, False) - megatron_weight_and_optimizer_memory(_megatron_args(s, 1, 1, False)) == pytest.approx(
        bias * per)
    norms = 2 * s.hidden * s.layers + s.hidden
    diff = _ours(s, 2, 1, False) - megatron_weight_and_optimizer_memory(_megatron_args(s, 2, 1, False))
    assert diff == pytest.approx((bias / 2 + norms / 2) * per)


def test_parameter_count_of_the_1p5b_model():
    assert M.hf_params(R1_1P5B) == 1_777_088_000  # DeepSeek-R1-Distill-Qwen-1.5B: 1.78B parameters
    # TP 2: half of every matrix, whole norms, half of the padded vocabulary twice (untied).
    assert M.rank_params(R1_1P5B, 2, 1) == (28 * M.layer_params(R1_1P5B, 2) + 1536 + 2 * 152064 // 2 * 1536)


def test_kv_cache_per_token_and_tensorrt_llm_sizing():
    """2 x layers x KV heads x head dim x 2 bytes; the fraction of the memory left after everything
    on the GPU at engine start, capped by max_gpu_total_bytes (the smaller wins)."""
    assert M.kv_bytes_per_token(R1_1P5B, 2) == 2 * 28 * 2 * 128 * 2 == 28672
    inp = M.Inputs(shape=R1_1P5B, gpu_bytes=80 * M.GiB, kv_fraction=0.5)
    assert M.trtllm_kv_cache_bytes(inp, used_at_start=20 * M.GiB) == 30 * M.GiB
    assert M.trtllm_kv_cache_bytes(inp.with_(kv_max_bytes=10 * M.GiB), 20 * M.GiB) == 10 * M.GiB
    assert M.trtllm_kv_cache_bytes(inp.with_(kv_max_bytes=40 * M.GiB), 20 * M.GiB) == 30 * M.GiB


def test_logits_of_the_loss_path_and_their_chunking():
    """A 16k-token row at TP 2: the bf16 logits and six fp32 copies of [tokens, V/2] (5.6 GB each)
    in the update, five in a forward-only pass; chunked log-probs (issue 22) keep the fp32 copies
    to one chunk."""
    inp = M.Inputs(shape=R1_1P5B, tp=2, seq_len=18432, micro_batch_rows=1)
    v = 152064 // 2
    assert M.logits_bytes(inp, grad=True) == 18432 * v * (2 + 6 * 4)
    assert M.logits_bytes(inp, grad=False) == 18432 * v * (2 + 5 * 4)
    chunked = inp.with_(logprob_chunk_tokens=2048)
    assert M.logits_bytes(chunked, grad=True) == 18432 * v * 2 + 6 * 2048 * v * 4


def test_token_budget_and_packing_set_the_micro_batch():
    inp = M.Inputs(shape=R1_1P5B, seq_len=10240, micro_batch_rows=1)
    assert M.micro_batch(inp) == (1, 10240)
    assert M.micro_batch(inp.with_(max_tokens_per_micro_batch=32768)) == (3, 10240)
    assert M.micro_batch(inp.with_(max_tokens_per_micro_batch=32768, pack_sequences=True)) == (1, 32768)


def test_recomputation_keeps_only_layer_inputs():
    inp = M.Inputs(shape=R1_1P5B, tp=2, seq_len=8192, micro_batch_rows=1, mini_batch_rows=64)
    full, recomputed = M.activation_bytes(inp), M.activation_bytes(inp.with_(recompute=True))
    assert recomputed["activations"] == (28 * 8192 * 1536 + 3 * 8192 * 1536) * 2
    assert recomputed["activations"] < full["activations"] / 10


def test_the_plan_package_does_not_import_torch():
    code = "import sys, megatron_prorl.plan.memory, megatron_prorl.plan.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
