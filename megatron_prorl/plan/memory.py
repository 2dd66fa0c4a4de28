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
the code named at each function and checked by ``tests/plan/test_plan_memory_validation.py``, which
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
# megatron_prorl/train/batch.py (ROW_MULTIPLE) makes every row the model sees a multiple of 8
# tokens long, a packed row and a token budget included.
ROW_MULTIPLE = 8

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

# megatron-core 0.16.1 models/common/embeddings/rotary_pos_embedding.py: RotaryEmbedding.forward
# is ``@lru_cache(maxsize=32)``, keyed by the module and the length.
ROPE_CACHE_SIZE = 32


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
    # Long sequences (train/batch.py, models/logprobs.py): a token budget per micro-batch of the
    # update (replaces micro_batch_rows x seq_len) and of the log-prob passes (None: the
    # update's), packed rows (one row of up to the budget), chunked log-probs (fp32 copies per
    # chunk); the entropy bonus (algo.entropy_coef != 0) differentiates the entropy too.
    max_tokens_per_micro_batch: Optional[int] = None
    max_tokens_per_logprob_micro_batch: Optional[int] = None
    pack_sequences: bool = False
    logprob_chunk_tokens: Optional[int] = None
    entropy_grad: bool = False
    # RoPE tables cached by the models over a run (megatron-core's lru_cache holds 32): every
    # distinct row length adds one (a run with exactly one length per model has 2).
    rope_tables: int = ROPE_CACHE_SIZE
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

@dataclass(frozen=True)
class MicroBatch:
    """The largest micro-batch of a pass as megatron_prorl/train/batch.py forms it: ``rows`` rows
    of ``width`` tokens, and the attention calls one layer makes on it as (rows, tokens) pairs: one
    ``[rows, width]`` call for padded rows; for a packed row one call per sequence (the local spec
    runs each sequence alone, models/attention.py; Transformer Engine's THD attention confines
    each to its cu_seqlens), so its quadratic terms are the sequences' squares, not the row's."""

    rows: int
    width: int
    calls: tuple[tuple[int, int], ...]
    sequences: int  # sequences in the micro-batch (its rows, or a packed row's sequences)

    @property
    def tokens(self) -> int:
        return self.rows * self.width

    @property
    def squares(self) -> int:
        """Sum over the calls of rows x length^2: the elements of the [b, a/t, s, s] scores per head."""
        return sum(b * s * s for b, s in self.calls)

    @property
    def largest_call(self) -> int:
        return max(b * s * s for b, s in self.calls)

    @property
    def masks(self) -> int:
        """Bytes of the causal masks, one [s, s] bool per call (local spec)."""
        return sum(s * s for _, s in self.calls)


def micro_batch(inp: Inputs, logprob_pass: bool = False) -> MicroBatch:
    """The largest micro-batch of the log-prob passes or of the update, every sequence at the
    stage's longest (prompt + response) ``L`` (train/actor.py ``_micro_batches``,
    train/batch.py):

    - fixed (no token budget): ``micro_batch_rows`` rows as wide as the batch (padding rows
      included: ``micro_batches`` pads the batch to a multiple of the size);
    - token budget (``max_tokens_per_micro_batch``; the log-prob passes use
      ``max_tokens_per_logprob_micro_batch`` when it is set): as many rows of ``L`` (rounded up
      to 8) as fit, at most the rows the pass has (the whole batch for log-probs, a mini-batch
      for the update);
    - packed: one row of up to the budget (rounded up to 8; a budget is a multiple of 8):
      the worst case of first-fit decreasing is a full row, ``budget // L`` whole sequences and
      a shorter one in the rest."""
    s, length = inp.seq_len, inp.prompt_len + inp.response_len
    budget = inp.max_tokens_per_micro_batch
    if logprob_pass and inp.max_tokens_per_logprob_micro_batch is not None:
        budget = inp.max_tokens_per_logprob_micro_batch
    available = inp.rows if logprob_pass else inp.mini_batch_rows
    if budget is None:
        return MicroBatch(inp.micro_batch_rows, s, ((inp.micro_batch_rows, s),), inp.micro_batch_rows)
    budget = max(budget, s)
    if not inp.pack_sequences:
        b = max(1, min(budget // s, available))
        return MicroBatch(b, s, ((b, s),), b)
    row = min(budget, pad_to(available * length, ROW_MULTIPLE))
    whole, rest = divmod(row, length)
    calls = ((1, length),) * whole + (((1, rest),) if rest else ())
    return MicroBatch(1, row, calls, whole + (1 if rest else 0))


def layer_activation_bytes(spec: str, mb: MicroBatch, h: int, f: int, a: int, g: int, d: int, tp: int,
                           sp: bool, dtype_bytes: int) -> int:
    """Bytes one transformer layer keeps for its backward, per micro-batch ``mb``.

    ``local`` (megatron-core 0.16.1 get_gpt_layer_local_spec, read off its autograd graph): per
    token 6h (each RMSNorm keeps its input and normalised input, each following linear its input:
    torch.nn.RMSNorm's pow/mul, LinearWithGradAccumulationAndAsyncCommunication's ctx), 4 a d / t
    (DotProductAttention: the reshaped query, repeat_interleave'd K and V, the context fed to
    linear_proj), 5 f / t (MLP.glu: fc1's output, ``x_linear + glu_linear_offset``, silu's output,
    fc2's input) and the two norms' rstd (with a = g, no repeat_interleave: K is the RoPE output
    and V a view of the fused QKV output, kept whole, 6 a d / t instead of 4); per attention call
    the softmax output ([b, a/t, s, s] probabilities: a/t per square) and the causal mask [s, s]
    bool it was masked with; RoPE's cos and sin for q and k, [width, d] each (rope_utils: ``t *
    cos`` saves only cos; a packed row's are gathered per sequence, as many rows as tokens).
    Dropout with p=0 keeps nothing.

    ``transformer_engine``: Korthikanti et al. 2022 (arXiv 2205.05198, Table 2) as Megatron-LM
    core_v0.16.1 megatron/training/theoretical_memory_usage.py implements it, in bytes for 16-bit
    activations (flash attention: no s^2 term; scaled here by dtype_bytes / 2): with sequence
    parallelism ``s b h (18 + 4 f / h) / t`` (compute_activation_memory), without
    ``s b h (10 + 24 / t)`` (compute_activation_memory_without_sp).
    """
    tokens = mb.tokens
    if spec == "local":
        attention = (4 if g < a else 6) * a * d // tp
        elements = tokens * (6 * h + attention + 5 * f // tp + 2) + (a // tp) * mb.squares + 4 * mb.width * d
        return elements * dtype_bytes + mb.masks
    if sp:
        return int(tokens * h * (18 + 4 * f / h) / tp * dtype_bytes / 2)
    return int(tokens * h * (10 + 24 / tp) * dtype_bytes / 2)


def layer_backward_peak_bytes(spec: str, mb: MicroBatch, h: int, f: int, a: int, g: int, d: int, tp: int,
                              sp: bool, dtype_bytes: int) -> int:
    """One layer's largest moment in its backward: what it keeps plus the gradients it creates.

    ``local`` (measured on the simulated device, tests/plan/test_plan_memory_validation.py): the
    attention backward, after the MLP's tensors are freed, holds the layer's attention part
    (3h + 4 a d / t per token, every call's probabilities and mask, cos/sin) and three more
    [b, a/t, s, s] tensors of the call it is in (the gradients of the probabilities and the
    scores, and masked_fill's masked gradient); the MLP backward holds the whole layer plus the
    gradients of fc1's output and of the activation (3 f / t per token). ``transformer_engine``:
    no s^2 tensors; we take the layer's activations once more for its gradients (an assumption
    the GPU benchmark checks)."""
    whole = layer_activation_bytes(spec, mb, h, f, a, g, d, tp, sp, dtype_bytes)
    if spec != "local":
        return 2 * whole
    tokens = mb.tokens
    attention = ((tokens * (3 * h + 4 * a * d // tp + 2) + 4 * mb.width * d
                  + (a // tp) * (mb.squares + 3 * mb.largest_call)) * dtype_bytes + mb.masks)
    mlp = whole + tokens * 3 * f // tp * dtype_bytes
    return max(attention, mlp)


def layer_forward_bytes(spec: str, mb: MicroBatch, h: int, f: int, a: int, g: int, d: int, tp: int,
                        dtype_bytes: int) -> int:
    """A layer's largest moment in a forward without autograd (the log-prob passes): the layer's
    input and what it computes from it, freed as it goes.

    ``local`` (megatron-core 0.16.1, measured on the simulated device): in the attention, at the
    context's permute, the layer input, the normalised input and one more [s, b, h], the fused QKV
    output, the reshaped and the rotated query, the rotated key, K and V repeated per query head
    (GQA only), the context and its permuted copy, and the call's scores and probabilities (two
    [b, a/t, s, s]); in the MLP, at ``glu``'s product, four [s, b, h] and fc1's output (2f / t)
    with silu's output, ``x_linear + offset`` and the product (f / t each). ``transformer_engine``:
    an estimate (flash attention, fused SwiGLU): the MLP's three [s, b, h] with fc1's output and
    the activation, 3h + 3f / t per token; the GPU benchmark checks it."""
    tokens = mb.tokens
    if spec != "local":
        return tokens * (3 * h + 3 * f // tp) * dtype_bytes
    heads = (a + 2 * g) * d // tp + (6 if g < a else 4) * a * d // tp + g * d // tp
    attention = tokens * (3 * h + heads) + 2 * (a // tp) * mb.largest_call
    mlp = tokens * (4 * h + 5 * f // tp)
    return max(attention, mlp) * dtype_bytes


def _layer_args(inp: Inputs, mb: MicroBatch) -> tuple:
    s_ = inp.shape
    return (inp.spec, mb, s_.hidden, s_.ffn, s_.heads, s_.kv_heads, s_.head_dim, inp.tp)


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
    mb = micro_batch(inp)
    d = inp.param_bytes
    layers = s_.layers // inp.pp
    args = (*_layer_args(inp, mb), inp.sequence_parallel, d)
    per_layer = layer_activation_bytes(*args)
    backward = layer_backward_peak_bytes(*args)
    layer_input = mb.tokens * s_.hidden // (inp.tp if inp.sequence_parallel else 1) * d
    last = pp_rank == inp.pp - 1
    final_norm = 3 * mb.tokens * s_.hidden * d if last else 0
    n_micro = max(1, -(-inp.mini_batch_rows // mb.sequences))
    in_flight = min(inp.pp - pp_rank, n_micro)
    if inp.recompute:
        kept = layers * layer_input * in_flight
        return {"activations": kept + final_norm, "backward": kept + backward}
    kept = layers * per_layer * in_flight
    return {"activations": kept + final_norm, "backward": kept - per_layer + backward}


# --------------------------------------------------------------- logits and log-probs

# fp32 copies of a micro-batch's logits [tokens, V/t] alive at the peak of
# megatron_prorl/models/logprobs.py vocab_parallel_logprobs(with_entropy=True) (no chunking),
# besides the model's own output (in the parameter dtype): the scaled-and-masked logits,
# ``shifted``, ``probs``, the padding-zeroed ``shifted`` and their product in ``p_logit``; with
# autograd also ``shifted.exp()`` (saved for the backward instead of being freed).
LOGPROB_FP32_COPIES_NO_GRAD = 5
LOGPROB_FP32_COPIES_GRAD = 6
# Chunk-sized fp32 tensors alive at the peak of models/logprobs.py _ChunkedLogprobs, read off
# its code. Forward (with or without autograd: a Function's forward records nothing): ``shifted``,
# ``e``, the padding-zeroed ``shifted`` and their product. Backward: from the second chunk on,
# the previous chunk's ``p`` and ``g`` are still bound while the loop computes ``shifted``,
# ``log_p`` and the new ``p`` (5; 4 when there is one chunk); with the entropy's gradient
# (algo.entropy_coef != 0) the entropy term's temporaries make it 6 (from the first chunk). The
# logits' gradient is written into one whole [tokens, V/t] tensor in the parameter dtype.
CHUNK_FP32_COPIES_FORWARD = 4
CHUNK_FP32_COPIES_BACKWARD = 5
CHUNK_FP32_COPIES_BACKWARD_ENTROPY = 6


def logits_bytes(inp: Inputs, grad: bool) -> int:
    """The peak of the vocabulary-sized tensors of one micro-batch (of the log-prob passes, or
    with ``grad`` of the update): the output layer's logits in the parameter dtype ([b, s, V/t]:
    GPTModel transposes them to batch-first, a contiguous copy the [s, b, V/t] original is freed
    after), plus the fp32 copies the log-prob and entropy code keeps alive. Unchunked: whole
    copies, at the loss forward's peak. Chunked (model.logprob_chunk_tokens): chunk-sized copies,
    so a forward-only pass may peak at the transpose instead; in the update the peak is the
    Function's backward, which also holds the logits' whole gradient."""
    mb = micro_batch(inp, logprob_pass=not grad)
    v = padded_vocab(inp.shape.vocab, inp.tp) // inp.tp
    tokens = mb.tokens
    model = tokens * v * inp.param_bytes
    # The transpose's copy is made while the original, the embedding's output and the final
    # norm's are alive (GPTModel.forward); a single row is contiguous either way (no copy).
    transpose = model + 2 * tokens * inp.shape.hidden * inp.param_bytes if mb.rows > 1 else 0
    chunk = inp.logprob_chunk_tokens
    if chunk is None:
        return model + (LOGPROB_FP32_COPIES_GRAD if grad else LOGPROB_FP32_COPIES_NO_GRAD) * tokens * v * 4
    if not grad:
        return model + max(transpose, CHUNK_FP32_COPIES_FORWARD * min(chunk, tokens) * v * 4)
    if inp.entropy_grad:
        copies = CHUNK_FP32_COPIES_BACKWARD_ENTROPY
    else:
        copies = CHUNK_FP32_COPIES_BACKWARD if tokens > chunk else CHUNK_FP32_COPIES_BACKWARD - 1
    return 2 * model + copies * min(chunk, tokens) * v * 4


def layer_caches(inp: Inputs) -> int:
    """Tensors the model keeps between steps: RoPE's embedding [s, 1, 1, d] fp32, lru-cached by
    RotaryEmbedding.forward per (model, length) (megatron-core 0.16.1
    models/common/embeddings/rotary_pos_embedding.py, ``lru_cache(maxsize=32)``, shared by the
    policy and the reference; micro-batches as wide as their longest row, and packed rows by their
    longest sequence, give many lengths over a run: ``rope_tables`` of them, each at most the
    stage's longest row); with the local spec the attention-score input buffer
    DotProductAttention takes from parallel_state.get_global_memory_buffer() ([b a/t, s, s] of
    the largest attention call of either pass, kept at its largest size;
    transformer/dot_product_attention.py). TE's fused attention needs no such buffer."""
    rope = inp.rope_tables * inp.seq_len * inp.shape.head_dim * 4
    if inp.spec != "local":
        return rope
    largest = max(micro_batch(inp).largest_call, micro_batch(inp, logprob_pass=True).largest_call)
    return rope + (inp.shape.heads // inp.tp) * largest * inp.param_bytes


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
    padded tensor the unpadded one is a view of), and building a matrix takes its gathered shards
    besides: the word embedding comes first in Hugging Face order (its shards and the rebuilt
    tensor, the bucket otherwise empty), fc1 ([2f, h]) and an untied output layer beside up to a
    bucket of tensors."""
    s = inp.shape
    b = inp.param_bytes
    if inp.tp == 1:
        qkv = s.layers // inp.pp * (s.hidden + (1 if s.qkv_bias else 0)) * (s.heads + 2 * s.kv_heads) * s.head_dim
        return min(qkv * b, inp.sync_bucket_bytes)
    embedding = padded_vocab(s.vocab, inp.tp) * s.hidden * b
    vocab_matrices = 1 if s.tied else 2
    model = hf_params(s) * b + vocab_matrices * (embedding - s.vocab * s.hidden * b)
    later = max(2 * s.ffn * s.hidden * b, 0 if s.tied else embedding)
    return max(2 * embedding, min(model, inp.sync_bucket_bytes) + later)


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
    lp_transient = {"reference_on_device": ref_on_device, "logprob_outputs": logprob_outputs_bytes(inp)}
    # A log-prob pass peaks in a layer's forward or at the logits (on the last stage), whichever
    # is larger: with chunked log-probs and long packed rows it can be the layer.
    layer = layer_forward_bytes(*_layer_args(inp, micro_batch(inp, logprob_pass=True)), inp.param_bytes)
    logits = logits_bytes(inp, grad=False) if last else 0
    lp_transient["logits" if logits >= layer else "layer_forward"] = max(logits, layer)
    lp = Phase({**state, **idle, **batch, **lp_transient})

    acts = activation_bytes(inp, pp_rank)
    forward_peak = acts["activations"] + (logits_bytes(inp, grad=True) if last else 0)
    backward_peak = acts["backward"]
    step_peak = optimizer_step_bytes(inp, params)
    upd = Phase({**state, **idle, **batch})
    # The update's peak is its largest moment: the loss path of a micro-batch (all it keeps plus
    # the logits path: the loss forward, or with chunked log-probs the start of the backward), a
    # layer's backward, or the optimizer step.
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


