"""Packed sequences (the THD layout) on Megatron-Core's local layer spec.

megatron-core 0.16.1 runs packed rows through ``PackedSeqParams`` (core/packed_seq_params.py:
``qkv_format="thd"``, ``cu_seqlens_q/kv``, ``max_seqlen_q/kv``), passed to
``GPTModel.forward(..., packed_seq_params=...)`` (models/gpt/gpt_model.py), which hands it to every
layer. In ``Attention.forward`` (transformer/attention.py) a THD row's query, key and value are
squeezed to ``[t, heads, d]``, RoPE restarts at every sequence start
(models/common/embeddings/rope_utils.py ``_apply_rotary_pos_emb_thd`` with the cu_seqlens; the
rotary table covers ``max_seqlen`` positions, models/common/embeddings/rotary_pos_embedding.py
``get_rotary_seq_len``) and the core attention gets ``packed_seq_params``. Transformer Engine's
``TEDotProductAttention`` (extensions/transformer_engine.py) confines attention to each
sequence with the cu_seqlens (``padding_causal``). The local ``DotProductAttention``
(transformer/dot_product_attention.py) asserts ``packed_seq_params is None``: this subclass
takes its place in the local spec and runs it once per sequence of the row, with its usual
causal mask, so each sequence attends exactly as it does unpacked (and the cost is the sum of
the squared lengths, not the square of the row's).

megatron-core 0.17.0 (the image's), read in the same files: ``PackedSeqParams`` adds
``total_tokens`` and ``seq_idx`` (for Mamba; both default to None, and ``TEDotProductAttention``
drops them before calling TE), ``GPTModel.forward`` takes and hands on ``packed_seq_params`` as
0.16.1 does, and the local ``DotProductAttention`` is unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention


class PackedDotProductAttention(DotProductAttention):
    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params: Optional[PackedSeqParams] = None):
        if packed_seq_params is None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
        if packed_seq_params.qkv_format != "thd":
            raise ValueError(f"packed sequences in the {packed_seq_params.qkv_format!r} layout: the local "
                             "attention takes 'thd'")
        # [t, heads, d] per THD row -> each sequence as a batch of one, [s, 1, heads, d].
        bounds = packed_seq_params.cu_seqlens_q.tolist()
        return torch.cat([
            super(PackedDotProductAttention, self).forward(
                query[a:b].unsqueeze(1), key[a:b].unsqueeze(1), value[a:b].unsqueeze(1), None,
                attn_mask_type, attention_bias)
            for a, b in zip(bounds, bounds[1:])])
