"""Micro-batches through Megatron's pipeline schedule (1F1B with PP > 1, plain loop without).

Losses handed to the schedule are already normalised by global counts (tokens or sequences of
the whole mini-batch across data-parallel ranks), so summing micro-batch gradients, and DDP
summing over ranks, gives the exact full-batch gradient (``calculate_per_token_loss`` is on,
see builder, and ``finalize_grads`` below never rescales).

Micro-batches of different shapes and counts (token budgets, packed rows), read in
megatron-core 0.16.1:

- the stages of a pipeline must agree on the count and on each micro-batch's shape: every rank
  of a data-parallel replica forms the same micro-batches from the same batch; the activations a
  stage sends have a shape fixed in advance (pipeline_parallel/schedules.py ``get_tensor_shapes``
  from ``seq_length`` x ``micro_batch_size``) unless ``config.variable_seq_lengths``, which sends
  each tensor's shape first (pipeline_parallel/p2p_communication.py ``_communicate_shapes``):
  set here exactly when the shapes differ;
- data-parallel ranks may run different numbers of micro-batches: with
  ``overlap_grad_reduce=False`` (the actor's DDP config) DDP's backward hook only adds each
  gradient into ``main_grad`` (distributed/distributed_data_parallel.py
  ``_make_backward_post_hook``), and the one all-reduce over the data-parallel group runs after
  the last micro-batch, in ``finalize_model_grads`` -> ``finish_grad_sync``
  (distributed/finalize_model_grads.py), once per rank whatever its count. The token count
  the schedule would all-reduce there is not passed (``finalize_grads`` below).

megatron-core 0.17.0 (the image's), read in the same files, keeps all three: ``get_tensor_shapes``
returns no fixed shapes under ``variable_seq_lengths``, the backward hook adds into
``main_grad`` without overlap, and ``finalize_model_grads(model, num_tokens=None, ...)``; CI's
image lane runs these paths on it.
"""

from __future__ import annotations

from typing import Callable

import torch


def finalize_grads(model, num_tokens=None, **kwargs):
    """DP all-reduce and tied-embedding sync, without Megatron's division by token count."""
    from megatron.core.distributed import finalize_model_grads

    return finalize_model_grads(model, None, **kwargs)


def packed_seq_params(mb: dict):
    """A packed micro-batch's THD parameters for GPTModel (megatron-core 0.16.1 and 0.17.0
    core/packed_seq_params.py: 0.17.0's extra fields keep their defaults); None for a padded one."""
    from megatron.core.packed_seq_params import PackedSeqParams

    if "cu_seqlens" not in mb:
        return None
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=mb["cu_seqlens"], cu_seqlens_kv=mb["cu_seqlens"],
                           max_seqlen_q=mb["max_seqlen"], max_seqlen_kv=mb["max_seqlen"])


def run_pipeline(model, micro_batches: list[dict], loss_fn: Callable, forward_only: bool) -> list[dict]:
    """Run ``micro_batches`` (dicts with "input_ids" [b, s] and "position_ids", and for a packed
    row "cu_seqlens" and "max_seqlen") through ``model``.

    ``loss_fn(micro_batch, logits) -> (loss, metrics)`` runs on the last pipeline stage, where the
    returned list holds each micro-batch's metrics; other stages get an empty list.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    one = torch.ones((), dtype=torch.int)
    get_model_config(model).variable_seq_lengths = len({mb["input_ids"].shape for mb in micro_batches}) > 1

    def forward_step(data_iterator, chunk):
        mb = next(data_iterator)
        # GPTModel.forward(input_ids, position_ids, attention_mask, ..., packed_seq_params=...):
        # no mask, the layers' own causal one (or the THD sequences' bounds).
        output = chunk(mb["input_ids"], mb["position_ids"], None, packed_seq_params=packed_seq_params(mb))

        def loss_func(logits):
            loss, metrics = loss_fn(mb, logits)
            return loss, one, metrics

        return output, loss_func

    b, s = micro_batches[0]["input_ids"].shape
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=[model],
        num_microbatches=len(micro_batches),
        seq_length=s,
        micro_batch_size=b,
        forward_only=forward_only,
    )
