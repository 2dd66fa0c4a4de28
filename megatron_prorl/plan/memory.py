"""Bytes on one GPU, per phase of a ProRL step: pure formulas, no torch.

A colocated RL step has four memory phases on each GPU (trainer.py ``train_step``):

- ``generation``: the rollout engine generates (weights + KV cache + its activations) while the
  trainer's state stays resident (weights, gradient buffer, optimizer states, reference);
- ``logprobs``: the engine sleeps; old and reference log-probs, forward only (the reference is
  brought on the device for its pass when it is offloaded);
- ``update``: forward + backward per micro-batch (activations, the fp32 logits of the loss path),
  then the optimizer step;
- ``wake``: the engine takes its weights and KV cache back and receives the new weights while the
  trainer's state, and whatever its caching allocator kept from the update, are still there.

Each term is a function of explicit parameters and names the source of its formula. The
counts of live tensors in the log-prob and loss path and in the local layer spec were read off
the code named at each function and checked by ``tests/plan/test_memory_validation.py``, which
runs the real trainer step on a simulated device and compares every phase's measured peak with
these formulas (fp32 on CPU; the same formulas take the dtype's bytes).

Conventions: ``t`` tensor-parallel size, ``h`` hidden size, ``f`` FFN hidden size, ``a`` query
heads, ``g`` KV heads (query groups), ``d`` head dim, ``V`` vocabulary (padded as Megatron pads
it), ``s`` sequence length of a row, ``b`` rows of a micro-batch, ``L`` layers on the rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

GiB = 1 << 30
MiB = 1 << 20

PHASES = ("generation", "logprobs", "update", "wake")

# Megatron pads the vocabulary to a multiple of 128 x TP (Megatron-LM --make-vocab-size-divisible-by,
# default 128; checkpoint_convert/arch.py VOCAB_DIVISIBLE_BY).
VOCAB_DIVISIBLE_BY = 128

# What no formula gives: each process with a CUDA context on the GPU costs memory outside the
# caching allocator (CUDA context and module images, cuBLAS workspaces, NCCL communicator buffers).
# Stated constants, not measured here: bench/gpu/bench_memory_plan.py prints the measured
# difference (mem_get_info's used bytes minus memory_reserved) so the first GPU run checks them.
TRAINER_RUNTIME_BYTES = 1 * GiB   # the trainer rank: context, cuBLAS, NCCL (TP, DP groups)
ENGINE_RUNTIME_BYTES = 2 * GiB    # a TensorRT-LLM worker process: context, NCCL, CUDA graphs

# TensorRT-LLM 1.3.0rc24 TorchLlmArgs defaults (rc24 llmapi/llm_args.html): the engine's largest
# forward (its KV-size estimation runs one) takes max_num_tokens tokens; max_batch_size requests.
TRTLLM_MAX_NUM_TOKENS = 8192
TRTLLM_MAX_BATCH_SIZE = 2048


def pad_to(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def padded_vocab(vocab: int, tp: int) -> int:
    """Megatron's padded vocabulary (checkpoint_convert.arch.padded_vocab_size)."""
    return pad_to(vocab, VOCAB_DIVISIBLE_BY * tp)


@dataclass(frozen=True)
class Shape:
    """The decoder's shape (from a config.json through checkpoint_convert.arch.HFArch)."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def of(cls, arch) -> "Shape":
        return cls(layers=arch.num_layers, hidden=arch.hidden_size, ffn=arch.ffn_hidden_size,
                   heads=arch.num_heads, kv_heads=arch.num_query_groups, head_dim=arch.head_dim,
                   vocab=arch.vocab_size, tied=arch.tie_embeddings, qkv_bias=arch.qkv_bias)


@dataclass(frozen=True)
class Inputs:
    """Everything the model needs for one stage on one GPU. ``from_config`` in
    megatron_prorl/plan/inputs.py fills it from a ProRL config."""

    shape: Shape
    # Layout.
    tp: int = 1
    pp: int = 1
    dp: int = 1
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    # Precision: bytes of a parameter (and activation) element; fp32 gradients and main weights.
    param_bytes: int = 2
    spec: str = "transformer_engine"  # or "local" (megatron-core's local layer spec)
    recompute: bool = False           # full recomputation of every layer (model.recompute_activations)
    fused_adam: bool = True           # TE / Apex FusedAdam (no per-step temporaries); torch AdamW otherwise
    offload_reference: bool = False
    kl: bool = True                   # the stage computes reference log-probs (kl_beta > 0)
    # The stage's work on one data-parallel rank.
    seq_len: int = 1024               # the longest row: prompt + response, padded to 8
    prompt_len: int = 512
    response_len: int = 512
    rows: int = 16                    # sequences per step on this rank (prompts x n)
    mini_batch_rows: int = 16
    micro_batch_rows: int = 1
    # Issue 22's knobs: a token budget per micro-batch (replaces micro_batch_rows x seq_len),
    # packed rows (one row of up to the budget), chunked log-probs (fp32 copies per chunk).
    max_tokens_per_micro_batch: Optional[int] = None
    pack_sequences: bool = False
    logprob_chunk_tokens: Optional[int] = None
    # The rollout engine on this GPU (the model-parallel group's first rank holds it).
    engine: str = "tensorrt_llm"      # or "transformers"
    engine_here: bool = True
    engine_tp: int = 1
    engine_bytes: int = 2
    sleep: bool = True                # rollout.sleep_during_training
    kv_fraction: float = 0.5
    kv_max_bytes: Optional[int] = None  # KvCacheConfig.max_gpu_total_bytes (issue 19's byte cap)
    engine_rows: int = 16             # sequences one generate call holds (prompts per chunk x n)
    sync_bucket_bytes: int = 512 * MiB
    # Runtime: the caching allocator's blocks from the update are returned before the engine
    # wakes (issue 19); CUDA contexts etc. (0 for the CPU validation, which counts tensors only).
    release_cache_before_wake: bool = False
    allocator_cache: bool = True
    trainer_runtime_bytes: int = TRAINER_RUNTIME_BYTES
    engine_runtime_bytes: int = ENGINE_RUNTIME_BYTES
    gpu_bytes: int = 80 * GiB

    def with_(self, **changes) -> "Inputs":
        return replace(self, **changes)


# ------------------------------------------------------------------------- parameters

def layer_params(s: Shape, tp: int) -> int:
    """Parameters of one transformer layer on a TP rank (megatron-core 0.16.1 GPT layer):
    two RMSNorm weights (replicated), QKV (+ bias for Qwen2) and output projection, the gated MLP's
    fc1 (gate and up, 2f) and fc2, the matrices split over TP."""
    qkv = s.hidden * (s.heads + 2 * s.kv_heads) * s.head_dim
    bias = (s.heads + 2 * s.kv_heads) * s.head_dim if s.qkv_bias else 0
    proj = s.heads * s.head_dim * s.hidden
    mlp = 3 * s.hidden * s.ffn
    return 2 * s.hidden + (qkv + bias + proj + mlp) // tp


def rank_params(s: Shape, tp: int, pp: int, pp_rank: int = 0) -> int:
    """Parameters held by one (TP, PP) rank of Megatron's GPTModel: its layers, the word
    embedding on the first stage, the final norm and the output layer on the last (the output
    layer is the embedding itself when tied and PP = 1; with PP > 1 the last stage holds a copy)."""
    first, last = pp_rank == 0, pp_rank == pp - 1
    embedding = padded_vocab(s.vocab, tp) // tp * s.hidden
    n = s.layers // pp * layer_params(s, tp)
    if first:
        n += embedding
    if last:
        n += s.hidden + (embedding if not (s.tied and first) else 0)
    return n


def hf_params(s: Shape) -> int:
    """Parameters of the Hugging Face model (what an engine loads): vocabulary unpadded."""
    return s.layers * layer_params(s, 1) + s.hidden + s.vocab * s.hidden * (1 if s.tied else 2)


# ------------------------------------------------------- trainer state (all phases)

def weights_bytes(params: int, param_bytes: int) -> int:
    """Model weights in the training dtype (Megatron-LM theoretical_memory_usage.py, core_v0.16.1:
    2 of its 18 bytes per parameter in bf16)."""
    return params * param_bytes


def grad_buffer_bytes(params: int) -> int:
    """Megatron DDP's contiguous gradient buffer, fp32 (actor.py: grad_reduce_in_fp32=True;
    megatron/core/distributed/param_and_grad_buffer.py): 4 bytes per parameter, never sharded
    (the distributed optimizer shards only its own states; theoretical_memory_usage.py's "6" =
    2 weight + 4 grad bytes)."""
    return params * 4


def main_params_bytes(params: int, param_bytes: int, dp: int, distributed: bool) -> int:
    """fp32 master weights for 16-bit training (Float16OptimizerWithFloat16Params, or the
    DistributedOptimizer's shard over DP; megatron/core/optimizer at 0.16.1). None in fp32: the
    optimizer steps the parameters themselves (FP32Optimizer; the distributed optimizer's fp32
    shards are views, distrib_optimizer.py _build_model_and_main_param_groups)."""
    if param_bytes >= 4:
        return 0
    return params * 4 // (dp if distributed else 1)


def adam_bytes(params: int, dp: int, distributed: bool) -> int:
    """Adam's two fp32 moments, 8 bytes per parameter, sharded over DP by the distributed
    optimizer (theoretical_memory_usage.py: 12 = 4 master + 8 moments, "/ data_parallel_size").
    Allocated at the first optimizer step, so after the engine sized its KV cache."""
    return params * 8 // (dp if distributed else 1)


# ------------------------------------------------------------------------ activations

def micro_batch(inp: Inputs) -> tuple[int, int]:
    """(rows b, row length s) of the largest micro-batch. Fixed micro-batches: micro_batch_rows
    rows of the stage's longest sequence; a token budget (issue 22): as many whole rows as fit,
    or one packed row of up to the budget."""
    s = inp.seq_len
    if inp.max_tokens_per_micro_batch is None:
        return inp.micro_batch_rows, s
    budget = max(inp.max_tokens_per_micro_batch, s)
    if inp.pack_sequences:
        return 1, budget
    return budget // s, s


def layer_activation_bytes(spec: str, b: int, s: int, h: int, f: int, a: int, g: int, d: int, tp: int,
                           sp: bool, dtype_bytes: int) -> int:
    """Bytes one transformer layer keeps for its backward, per micro-batch of b rows of s tokens.

    ``local`` (megatron-core 0.16.1 get_gpt_layer_local_spec, read off its autograd graph): per
    token 6h (each RMSNorm keeps its input and normalised input, each following linear its input:
    torch.nn.RMSNorm's pow/mul, LinearWithGradAccumulationAndAsyncCommunication's ctx), 4 a d / t
    (DotProductAttention: the reshaped query, repeat_interleave'd K and V, the context fed to
    linear_proj), 5 f / t (MLP.glu: fc1's output, ``x_linear + glu_linear_offset``, silu's output,
    fc2's input) and the two norms' rstd (with a = g, no repeat_interleave: K is the RoPE output
    and V a view of the fused QKV output, kept whole, 6 a d / t instead of 4); the softmax output,
    a s / t per token (the unfused
    [b, a/t, s, s] probabilities), and the causal mask [s, s] bool it was masked with; RoPE's cos
    and sin for q and k, [s, d] each (rope_utils: ``t * cos`` saves only cos). Dropout with p=0
    keeps nothing.

    ``transformer_engine``: Korthikanti et al. 2022 (arXiv 2205.05198, Table 2) as Megatron-LM
    core_v0.16.1 megatron/training/theoretical_memory_usage.py implements it, in bytes for 16-bit
    activations (flash attention: no s^2 term; scaled here by dtype_bytes / 2): with sequence
    parallelism ``s b h (18 + 4 f / h) / t`` (compute_activation_memory), without
    ``s b h (10 + 24 / t)`` (compute_activation_memory_without_sp).
    """
    tokens = b * s
    if spec == "local":
        attention = (4 if g < a else 6) * a * d // tp
        elements = tokens * (6 * h + attention + 5 * f // tp + 2) + b * (a // tp) * s * s + 4 * s * d
        return elements * dtype_bytes + s * s
    if sp:
        return int(tokens * h * (18 + 4 * f / h) / tp * dtype_bytes / 2)
    return int(tokens * h * (10 + 24 / tp) * dtype_bytes / 2)


def layer_backward_peak_bytes(spec: str, b: int, s: int, h: int, f: int, a: int, g: int, d: int, tp: int,
                               sp: bool, dtype_bytes: int) -> int:
    """One layer's largest moment in its backward: what it keeps plus the gradients it creates.

    ``local`` (measured on the simulated device, tests/plan/test_memory_validation.py): the
    attention backward, after the MLP's tensors are freed, holds the layer's attention part
    (3h + 4 a d / t per token, the probabilities, the mask, cos/sin) and three more [b, a/t, s, s]
    tensors (the gradients of the probabilities and the scores, and masked_fill's masked
    gradient); the MLP backward holds the whole layer plus the gradients of fc1's output and of
    the activation (3 f / t per token). ``transformer_engine``: no s^2 tensors; we take the layer's
    activations once more for its gradients (an assumption the GPU benchmark checks)."""
    whole = layer_activation_bytes(spec, b, s, h, f, a, g, d, tp, sp, dtype_bytes)
    if spec != "local":
        return 2 * whole
    tokens = b * s
    probs = b * (a // tp) * s * s * dtype_bytes
    attention = (tokens * (3 * h + 4 * a * d // tp + 2) + 4 * s * d) * dtype_bytes + 4 * probs + s * s
    mlp = whole + tokens * 3 * f // tp * dtype_bytes
    return max(attention, mlp)


def activation_bytes(inp: Inputs, pp_rank: int = 0) -> dict[str, int]:
    """What the update's micro-batch keeps on this rank at its two candidate peaks: the loss
    forward (everything the forward keeps for the backward; the logits are added by the caller)
    and a layer's backward.

    Without recomputation every layer keeps :func:`layer_activation_bytes`; with full
    recomputation (model.recompute_activations: recompute_granularity="full", uniform, 1 layer;
    Korthikanti section 4) each layer keeps only its input [s, b, h] (/t with SP) and one layer at
    a time is rebuilt in the backward. The last stage adds the final norm's input, normalised
    input and output (3 s b h). With PP > 1 the first stage holds min(pp, micro-batches)
    micro-batches in flight (theoretical_memory_usage.py)."""
    s_ = inp.shape
    b, s = micro_batch(inp)
    d = inp.param_bytes
    layers = s_.layers // inp.pp
    args = (inp.spec, b, s, s_.hidden, s_.ffn, s_.heads, s_.kv_heads, s_.head_dim, inp.tp, inp.sequence_parallel, d)
    per_layer = layer_activation_bytes(*args)
    backward = layer_backward_peak_bytes(*args)
    layer_input = b * s * s_.hidden // (inp.tp if inp.sequence_parallel else 1) * d
    last = pp_rank == inp.pp - 1
    final_norm = 3 * b * s * s_.hidden * d if last else 0
    n_micro = max(1, inp.mini_batch_rows // b)
    in_flight = min(inp.pp - pp_rank, n_micro)
    if inp.recompute:
        kept = layers * layer_input * in_flight
        return {"activations": kept + final_norm, "backward": kept + backward}
    kept = layers * per_layer * in_flight
    return {"activations": kept + final_norm, "backward": kept - per_layer + backward}


# --------------------------------------------------------------- logits and log-probs

# Copies of a micro-batch's logits [tokens, V/t] alive at the peak of
# megatron_prorl/models/logprobs.py vocab_parallel_logprobs(with_entropy=True), in fp32, besides
# the model's own output (in the parameter dtype): the scaled-and-masked logits, ``shifted``,
# ``probs``, the padding-zeroed ``shifted`` and their product in ``p_logit``; with autograd also
# ``shifted.exp()`` (saved for the backward instead of being freed).
LOGPROB_FP32_COPIES_NO_GRAD = 5
LOGPROB_FP32_COPIES_GRAD = 6


def logits_bytes(inp: Inputs, grad: bool) -> int:
    """The peak of the vocabulary-sized tensors of one micro-batch: the output layer's logits in
    the parameter dtype ([b, s, V/t], GPTModel transposes them to batch-first, a contiguous copy
    the [s, b, V/t] original is freed for) plus the fp32 copies the log-prob and entropy code keeps
    alive (over one chunk with model.logprob_chunk_tokens)."""
    b, s = micro_batch(inp)
    v = padded_vocab(inp.shape.vocab, inp.tp) // inp.tp
    tokens = b * s
    fp32_tokens = min(tokens, inp.logprob_chunk_tokens or tokens)
    copies = LOGPROB_FP32_COPIES_GRAD if grad else LOGPROB_FP32_COPIES_NO_GRAD
    return tokens * v * inp.param_bytes + copies * fp32_tokens * v * 4


def layer_caches(inp: Inputs) -> int:
    """Tensors the model keeps between steps: RoPE's embedding [s, 1, 1, d] fp32 for each model
    (policy, reference), lru-cached by RotaryEmbedding.forward (megatron-core 0.16.1
    models/common/embeddings/rotary_pos_embedding.py); with the local spec the attention-score
    input buffer DotProductAttention takes from parallel_state.get_global_memory_buffer()
    ([b a/t, s, s], kept at its largest size; transformer/dot_product_attention.py). TE's fused
    attention needs no such buffer."""
    b, s = micro_batch(inp)
    rope = 2 * s * inp.shape.head_dim * 4
    if inp.spec != "local":
        return rope
    return rope + b * (inp.shape.heads // inp.tp) * s * s * inp.param_bytes


def batch_bytes(inp: Inputs) -> int:
    """The rank's TrainBatch (megatron_prorl/train/batch.py) on the device from the log-prob pass to the
    end of the update: input ids int64 [N, S]; loss mask, engine, old and reference log-probs
    fp32 [N, S-1]; and the old-log-prob pass's per-micro-batch outputs (log-probs and entropy)
    concatenated."""
    n, s = inp.rows, inp.seq_len
    per_token = 8 + 4 * (3 + (1 if inp.kl else 0))
    return n * s * per_token


def logprob_outputs_bytes(inp: Inputs) -> int:
    """forward_logprobs collects each micro-batch's log-probs and entropy [b, S-1] fp32 and
    concatenates them (actor.py): two copies of 2 x [N, S-1] at the end of the pass."""
    return 2 * 2 * inp.rows * (inp.seq_len - 1) * 4


def optimizer_step_bytes(inp: Inputs, params: int) -> int:
    """Temporaries of the optimizer step, after the backward has freed the activations:
    torch.optim.AdamW's foreach path (megatron-core 0.16.1 falls back to it without TE/Apex)
    allocates sqrt(exp_avg_sq) for every parameter of the step (4 bytes each); FusedAdam none.
    The non-finite gradient check (actor._grads_finite) adds one bool mask of the largest
    parameter."""
    owned = params // (inp.dp if inp.distributed_optimizer else 1)
    adam = 0 if inp.fused_adam else owned * 4
    largest = padded_vocab(inp.shape.vocab, inp.tp) // inp.tp * inp.shape.hidden
    return adam + largest


# ------------------------------------------------------------------------- the engine

def kv_bytes_per_token(s: Shape, dtype_bytes: int, engine_tp: int = 1) -> int:
    """KV cache bytes per token: 2 (K and V) x layers x KV heads (per engine TP rank) x head dim x
    dtype bytes (TensorRT-LLM KVCacheManager.get_cache_size_per_token; the same for the
    transformers engine's DynamicCache)."""
    return 2 * s.layers * max(1, s.kv_heads // engine_tp) * s.head_dim * dtype_bytes


def engine_weights_bytes(inp: Inputs) -> int:
    """The engine's copy of the model in its dtype, split over the engine's TP."""
    return hf_params(inp.shape) * inp.engine_bytes // inp.engine_tp


def trtllm_activation_bytes(inp: Inputs) -> int:
    """An estimate of the TensorRT-LLM engine's largest forward (it measures this itself during
    its KV-size estimation): one batch of max_num_tokens tokens through a layer (hidden states,
    QKV, attention output, the MLP's 2f and f intermediates in the engine dtype) plus the
    sampler's fp32 logits for every running request (logits, temperature-scaled, log-softmax for
    PROCESSED log-probs, probabilities: 4 copies). Not read from TensorRT-LLM's source: the GPU
    benchmark checks it."""
    s = inp.shape
    tokens = TRTLLM_MAX_NUM_TOKENS
    forward = tokens * (4 * s.hidden + (s.heads + 2 * s.kv_heads) * s.head_dim + 3 * s.ffn) * inp.engine_bytes
    requests = min(TRTLLM_MAX_BATCH_SIZE, inp.engine_rows)
    return forward // inp.engine_tp + 4 * requests * s.vocab * 4


def trtllm_kv_cache_bytes(inp: Inputs, used_at_start: int) -> int:
    """TensorRT-LLM 1.3.0rc24's KV cache: ``free_gpu_memory_fraction`` of the memory free after
    the engine's weights and its largest forward, all processes counted (``(total - peak) *
    fraction``, KvCacheCreator._cal_max_memory, tensorrt_llm/_torch/pyexecutor/_util.py, stored
    copy at 0004396), capped by ``KvCacheConfig.max_gpu_total_bytes`` when set ("if user provided
    max_gpu_total_bytes, set max memory from max_gpu_total_bytes": min of the two)."""
    by_fraction = int(max(0, inp.gpu_bytes - used_at_start) * inp.kv_fraction)
    if inp.kv_max_bytes:
        return min(by_fraction, inp.kv_max_bytes)
    return by_fraction


def transformers_generation_bytes(inp: Inputs) -> dict[str, int]:
    """The transformers engine (megatron_prorl/rollout/hf_engine.py) at the last decoding step of
    a generate call: its DynamicCache for engine_rows rows of prompt + response - 1 tokens; the
    step's transients: one layer's K (or V) twice while the cache concatenates (torch.cat), the
    sampled tokens [rows, R] int64 and log-probs fp32, the attention mask [rows, T] int64 and its
    extension. Decoding does not repeat K and V per query head (transformers'
    sdpa_attention_forward packs the query instead, pack_gqa, when q_length == 1)."""
    rows, length = inp.engine_rows, inp.prompt_len + inp.response_len - 1
    cache = rows * length * kv_bytes_per_token(inp.shape, inp.engine_bytes)
    step = cache // (2 * inp.shape.layers)
    buffers = rows * inp.response_len * 12 + 2 * rows * length * 8
    return {"kv_cache": cache, "engine_activations": step + buffers}


def sync_bytes(inp: Inputs) -> int:
    """The weight sync's tensors on the engine rank (megatron_prorl/weight_sync/collective.py
    export_to_first_rank). At TP 1 the exported HF tensors are views of the parameters except the
    QKV weights and biases, re-split per head group (copies). At TP > 1 every tensor is rebuilt from
    its gathered shards, so a bucket holds copies (the word embedding and output layer as the
    padded tensor the unpadded one is a view of), and building the largest layer matrix (fc1,
    [2f, h]) takes its gathered shards besides."""
    s = inp.shape
    b = inp.param_bytes
    if inp.tp == 1:
        qkv = s.layers // inp.pp * (s.hidden + (1 if s.qkv_bias else 0)) * (s.heads + 2 * s.kv_heads) * s.head_dim
        return min(qkv * b, inp.sync_bucket_bytes)
    vocab_rows = padded_vocab(s.vocab, inp.tp) * (1 if s.tied else 2)
    model = (hf_params(s) - s.vocab * s.hidden * (1 if s.tied else 2) + vocab_rows * s.hidden) * b
    return min(model, inp.sync_bucket_bytes) + 2 * s.ffn * s.hidden * b


# ------------------------------------------------------------------------- the phases

@dataclass
class Phase:
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return sum(self.terms.values())


def trainer_state(inp: Inputs, params: int) -> dict[str, int]:
    """What the trainer keeps on its GPU from one step to the next."""
    return {
        "policy_weights": weights_bytes(params, inp.param_bytes),
        "grad_buffer": grad_buffer_bytes(params),
        "main_params": main_params_bytes(params, inp.param_bytes, inp.dp, inp.distributed_optimizer),
        "optimizer_states": adam_bytes(params, inp.dp, inp.distributed_optimizer),
        "reference_weights": 0 if inp.offload_reference else weights_bytes(params, inp.param_bytes),
        "layer_caches": layer_caches(inp),
        "trainer_runtime": inp.trainer_runtime_bytes,
    }


def engine_terms(inp: Inputs, params: int) -> dict[str, int]:
    """The engine's bytes while it is awake (generation; wake adds the trainer's allocator cache)."""
    if not inp.engine_here:
        return {}
    if inp.engine == "tensorrt_llm":
        weights = engine_weights_bytes(inp)
        act = trtllm_activation_bytes(inp)
        # The engine starts after the trainer built its models (trainer.py): the weights, gradient
        # buffer and master weights exist, Adam's moments do not.
        state = trainer_state(inp, params)
        at_start = (state["policy_weights"] + state["grad_buffer"] + state["main_params"]
                    + state["reference_weights"] + state["trainer_runtime"] + inp.engine_runtime_bytes
                    + weights + act)
        return {"engine_weights": weights, "kv_cache": trtllm_kv_cache_bytes(inp, at_start),
                "engine_activations": act, "engine_runtime": inp.engine_runtime_bytes}
    return {"engine_weights": engine_weights_bytes(inp), **transformers_generation_bytes(inp)}


def engine_idle(inp: Inputs, awake: dict[str, int]) -> dict[str, int]:
    """What the engine keeps while the trainer works. Asleep (rollout.sleep_during_training):
    TensorRT-LLM's worker process stays (context, NCCL) while its weights, KV cache and buffers
    are released (trtllm.py sleep(): every ExecutorMemoryType tag); the transformers engine moves
    its weights to the host (hf_engine.py sleep()). Awake but idle: TensorRT-LLM keeps weights and
    its preallocated KV cache, the transformers engine its weights (its cache lives per call)."""
    if not inp.engine_here:
        return {}
    if inp.engine == "tensorrt_llm":
        keep = ("engine_runtime",) if inp.sleep else ("engine_weights", "kv_cache", "engine_runtime")
    else:
        keep = () if inp.sleep else ("engine_weights",)
    return {k: v for k, v in awake.items() if k in keep}


def phases(inp: Inputs, pp_rank: int = 0) -> dict[str, Phase]:
    """The four phases' terms on the GPU of pipeline stage ``pp_rank`` (its TP rank 0, the engine
    rank when ``pp_rank`` is 0)."""
    params = rank_params(inp.shape, inp.tp, inp.pp, pp_rank)
    state = trainer_state(inp, params)
    last = pp_rank == inp.pp - 1
    engine = engine_terms(inp, params)
    idle = engine_idle(inp, engine)
    batch = {"batch": batch_bytes(inp)}

    ref_on_device = weights_bytes(params, inp.param_bytes) if (inp.kl and inp.offload_reference) else 0
    lp_transient = {"reference_on_device": ref_on_device, "logprob_outputs": logprob_outputs_bytes(inp),
                    "logits": logits_bytes(inp, grad=False) if last else 0}
    lp = Phase({**state, **idle, **batch, **lp_transient})

    acts = activation_bytes(inp, pp_rank)
    forward_peak = acts["activations"] + (logits_bytes(inp, grad=True) if last else 0)
    backward_peak = acts["backward"]
    step_peak = optimizer_step_bytes(inp, params)
    upd = Phase({**state, **idle, **batch})
    # The update's peak is its largest moment: the loss forward of a micro-batch (all it keeps
    # plus the logits path), a layer's backward, or the optimizer step.
    if forward_peak >= max(backward_peak, step_peak):
        upd.terms.update({"activations": acts["activations"], "logits": forward_peak - acts["activations"]})
    elif backward_peak >= step_peak:
        upd.terms["activations_backward"] = backward_peak
    else:
        upd.terms["optimizer_step"] = step_peak

    # PyTorch's caching allocator keeps the blocks of the update (and of the log-prob passes,
    # unless the reference offload's empty_cache() returned them after the last one) reserved
    # while the engine wakes and through the next generation, unless the trainer returns them.
    cache = 0
    if inp.allocator_cache and not inp.release_cache_before_wake:
        cache = max(forward_peak, backward_peak, step_peak)
        if not (inp.kl and inp.offload_reference):
            cache = max(cache, sum(lp_transient.values()))
    wake_engine = {k: v for k, v in engine.items()
                   if k in ("engine_weights", "engine_runtime") or (k == "kv_cache" and inp.engine == "tensorrt_llm")}
    wake = Phase({**state, **wake_engine, "trainer_allocator_cache": cache,
                  "weight_sync": sync_bytes(inp) if inp.engine_here else 0})
    gen = Phase({**state, **engine, "trainer_allocator_cache": cache})
    return {"generation": gen, "logprobs": lp, "update": upd, "wake": wake}


def drop_zero(ph: dict[str, Phase]) -> dict[str, Phase]:
    return {name: Phase({k: int(v) for k, v in p.terms.items() if v}) for name, p in ph.items()}


def worst_gpu(inp: Inputs) -> dict[str, Phase]:
    """Per phase, the GPU with the most bytes among the pipeline stages (the first stage holds the
    engine and the embedding, the last the output layer and the logits)."""
    best: dict[str, Phase] = {}
    for pp_rank in sorted({0, inp.pp - 1}):
        for name, p in drop_zero(phases(inp.with_(engine_here=inp.engine_here and pp_rank == 0), pp_rank)).items():
            if name not in best or p.peak > best[name].peak:
                best[name] = p
    return best


