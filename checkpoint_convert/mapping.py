"""Hugging Face <-> Megatron-Core parameter mapping for Qwen2 and Llama decoders.

Pure functions of names, shapes and tensors: no I/O, no processes. One Megatron parameter
(local layer spec names; layers numbered globally here) is built from one or more HF tensors:

=================================================  ==================================  ==============
Megatron                                           HF (``model.layers.i.`` elided)     TP split
=================================================  ==================================  ==============
embedding.word_embeddings.weight                   model.embed_tokens.weight           rows, padded
decoder.layers.i.input_layernorm.weight            input_layernorm.weight              replicated
decoder.layers.i.self_attention.linear_qkv.weight  self_attn.{q,k,v}_proj.weight       query groups
decoder.layers.i.self_attention.linear_qkv.bias    self_attn.{q,k,v}_proj.bias         query groups
decoder.layers.i.self_attention.linear_proj.weight self_attn.o_proj.weight             columns
decoder.layers.i.pre_mlp_layernorm.weight          post_attention_layernorm.weight     replicated
decoder.layers.i.mlp.linear_fc1.weight             mlp.{gate,up}_proj.weight           gate, up each
decoder.layers.i.mlp.linear_fc2.weight             mlp.down_proj.weight                columns
decoder.final_layernorm.weight                     model.norm.weight                   replicated
output_layer.weight                                lm_head.weight                      rows, padded
=================================================  ==================================  ==============

- qkv: per query group g, the rows [q heads of g; k head of g; v head of g]; a TP rank holds
  whole groups. fc1 = cat(gate, up) with gate and up split over TP separately, so rank r holds
  cat(gate_r, up_r). Embedding and output layer rows are padded with zeros to
  ``padded_vocab_size(vocab, tp)``; the padding is dropped on the way back.
- Pipeline stage s holds layers [s*L/pp, (s+1)*L/pp), numbered from 0 on each stage.
- Tied embeddings: HF has no lm_head; Megatron has no output layer at PP=1 and, at PP>1, a copy
  of the embedding on the last stage (``Param.tied_copy``), filled from embed_tokens and never
  exported.
- Transformer Engine fuses the two layer norms into the following linear layer:
  ``linear_qkv.layer_norm_weight`` and ``linear_fc1.layer_norm_weight`` name the same tensors as
  ``input_layernorm.weight`` and ``pre_mlp_layernorm.weight`` (and are the dist_checkpointing keys
  of both specs).

HF tensors come in through a reader ``read(hf_name, rows)`` returning the rows ``rows`` (a slice
of dim 0, or all of it for ``None``), so a rank reads only its own shard from disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional, Sequence

import torch

from checkpoint_convert.arch import HFArch, padded_vocab_size
from checkpoint_convert.errors import ConversionError

Reader = Callable[[str, Optional[slice]], torch.Tensor]

# How the TP shards of a Megatron parameter relate to its HF tensors.
QKV = "qkv"  # rows, by whole query groups, q/k/v interleaved per group
FC1 = "fc1"  # cat(gate_r, up_r)
COLUMNS = "columns"  # row-parallel linear: split along dim 1
VOCAB = "vocab"  # rows, zero-padded to the padded vocabulary
REPLICATED = "replicated"

LAYER_PREFIX = "decoder.layers."
# Transformer Engine name -> local spec name (suffixes after "decoder.layers.<i>.").
TE_ALIASES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
LOCAL_TO_TE = {local: te for te, local in TE_ALIASES.items()}
# Linear layers carrying an `_extra_state` (FP8 metadata in TE; None in the local spec).
LINEAR_MODULES = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
                  "mlp.linear_fc2")
# HF tensors that exist in some released checkpoints but carry nothing the model needs.
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Param:
    """One Megatron parameter of the whole model and the HF tensors it is made of."""

    name: str  # local spec name, layer numbered globally
    hf_names: tuple[str, ...]
    kind: str
    layer: Optional[int] = None  # global layer index for decoder layers
    tied_copy: bool = False  # last-stage copy of the tied embedding (PP > 1)

    @property
    def suffix(self) -> str:
        """The name after ``decoder.layers.<i>.`` (the whole name outside the layers)."""
        if self.layer is None:
            return self.name
        return self.name[len(f"{LAYER_PREFIX}{self.layer}."):]


def _layer_params(arch: HFArch, i: int) -> list[Param]:
    m, h = f"{LAYER_PREFIX}{i}.", f"model.layers.{i}."
    attn = [h + f"self_attn.{p}_proj" for p in "qkv"]
    params = [
        Param(m + "input_layernorm.weight", (h + "input_layernorm.weight",), REPLICATED, i),
        Param(m + "self_attention.linear_qkv.weight", tuple(a + ".weight" for a in attn), QKV, i),
    ]
    if arch.qkv_bias:
        params.append(Param(m + "self_attention.linear_qkv.bias", tuple(a + ".bias" for a in attn), QKV, i))
    params += [
        Param(m + "self_attention.linear_proj.weight", (h + "self_attn.o_proj.weight",), COLUMNS, i),
        Param(m + "pre_mlp_layernorm.weight", (h + "post_attention_layernorm.weight",), REPLICATED, i),
        Param(m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), FC1, i),
        Param(m + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",), COLUMNS, i),
    ]
    return params


def is_ignored_hf_name(name: str, arch: HFArch) -> bool:
    """HF tensors that may be present but are not weights of the model."""
    return name.endswith(IGNORED_HF_SUFFIXES) or (arch.tie_embeddings and name == "lm_head.weight")


def canonical_name(name: str) -> str:
    """The local spec name of a live parameter name (TE fused-norm names are aliases)."""
    for te, local in TE_ALIASES.items():
        if name.endswith("." + te):
            return name[: -len(te)] + local
    return name


@dataclass(frozen=True)
class Layout:
    """A model (``arch``) split over ``tp`` tensor- and ``pp`` pipeline-parallel ranks."""

    arch: HFArch
    tp: int = 1
    pp: int = 1

    def __post_init__(self):
        a = self.arch
        if self.tp < 1 or self.pp < 1:
            raise ConversionError(f"tp={self.tp}, pp={self.pp}: both must be >= 1")
        for value, name in ((a.num_heads, "num_attention_heads"),
                            (a.num_query_groups, "num_key_value_heads (query groups)"),
                            (a.ffn_hidden_size, "intermediate_size")):
            if value % self.tp:
                raise ConversionError(f"tp={self.tp} does not divide {name}={value}")
        if a.num_layers % self.pp:
            raise ConversionError(f"pp={self.pp} does not divide num_hidden_layers={a.num_layers}")

    @property
    def padded_vocab(self) -> int:
        return padded_vocab_size(self.arch.vocab_size, self.tp)

    @property
    def layers_per_stage(self) -> int:
        return self.arch.num_layers // self.pp

    @cached_property
    def params(self) -> list[Param]:
        """Every Megatron parameter of the model, in HF module order."""
        a = self.arch
        params = [Param("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), VOCAB)]
        for i in range(a.num_layers):
            params += _layer_params(a, i)
        params.append(Param("decoder.final_layernorm.weight", ("model.norm.weight",), REPLICATED))
        if not a.tie_embeddings:
            params.append(Param("output_layer.weight", ("lm_head.weight",), VOCAB))
        elif self.pp > 1:
            params.append(Param("output_layer.weight", ("model.embed_tokens.weight",), VOCAB, tied_copy=True))
        return params

    def stage(self, param: Param) -> int:
        """The pipeline stage holding ``param``."""
        if param.layer is not None:
            return param.layer // self.layers_per_stage
        return 0 if param.name.startswith("embedding.") else self.pp - 1

    def local_name(self, param: Param) -> str:
        """The parameter's name on its stage (layers renumbered from 0)."""
        if param.layer is None:
            return param.name
        return f"{LAYER_PREFIX}{param.layer % self.layers_per_stage}.{param.suffix}"

    @cached_property
    def _stages(self) -> list[dict[str, Param]]:
        stages: list[dict[str, Param]] = [{} for _ in range(self.pp)]
        for p in self.params:
            stages[self.stage(p)][self.local_name(p)] = p
        return stages

    def stage_params(self, pp_rank: int) -> dict[str, Param]:
        """Local name -> Param for the parameters of one pipeline stage."""
        return self._stages[pp_rank]

    def param_for(self, local_name: str, pp_rank: int) -> Param:
        """The Param of a live parameter name (local spec or TE) on stage ``pp_rank``."""
        try:
            return self.stage_params(pp_rank)[canonical_name(local_name)]
        except KeyError:
            raise ConversionError(f"parameter {local_name!r} of pipeline stage {pp_rank} is not part of the "
                              f"{self.arch.family} mapping (tp={self.tp}, pp={self.pp})") from None

    def shard_shape(self, param: Param) -> tuple[int, ...]:
        """Shape of one TP shard of ``param``."""
        a = self.arch
        H, d = a.hidden_size, a.head_dim
        if param.kind == VOCAB:
            return (self.padded_vocab // self.tp, H)
        if param.kind == REPLICATED:
            return (H,)
        if param.kind == QKV:
            rows = (a.num_heads + 2 * a.num_query_groups) * d // self.tp
            return (rows, H) if param.name.endswith(".weight") else (rows,)
        if param.kind == FC1:
            return (2 * a.ffn_hidden_size // self.tp, H)
        in_features = a.num_heads * d if "linear_proj" in param.name else a.ffn_hidden_size
        return (H, in_features // self.tp)


def param_hf_shapes(param: Param, arch: HFArch) -> tuple[tuple[int, ...], ...]:
    """Shapes of the HF tensors of ``param`` (in ``param.hf_names`` order)."""
    H, F = arch.hidden_size, arch.ffn_hidden_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_query_groups * arch.head_dim
    if param.kind == VOCAB:
        return ((arch.vocab_size, H),)
    if param.kind == REPLICATED:
        return ((H,),)
    if param.kind == QKV:
        return tuple((rows, H) if param.name.endswith(".weight") else (rows,) for rows in (q, kv, kv))
    if param.kind == FC1:
        return ((F, H), (F, H))
    return ((H, q),) if "linear_proj" in param.name else ((H, F),)


def hf_shapes(arch: HFArch) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF checkpoint with its shape, in module order."""
    return {name: shape for p in Layout(arch).params for name, shape in zip(p.hf_names, param_hf_shapes(p, arch))}


def checkpoint_key(param: Param) -> str:
    """The dist_checkpointing key of ``param`` (the same for local and TE specs)."""
    if param.tied_copy:
        return "embedding.word_embeddings.weight"
    if param.layer is None:
        return param.name
    return LAYER_PREFIX + LOCAL_TO_TE.get(param.suffix, param.suffix)


def checkpoint_keys(param: Param) -> tuple[str, ...]:
    """Keys ``param`` may have in a checkpoint, preferred first: a layer norm saved without the
    local spec's key map (older Megatron-Core) keeps its local name."""
    key = checkpoint_key(param)
    if param.layer is not None and param.suffix in LOCAL_TO_TE:
        return key, LAYER_PREFIX + param.suffix
    return (key,)


# ---- qkv interleaving -------------------------------------------------------------------------

def interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """Megatron's fused qkv rows for ``groups`` query groups: per group [q heads; k; v]."""
    rest = q.shape[1:]
    return torch.cat([q.reshape(groups, -1, *rest), k.reshape(groups, -1, *rest),
                      v.reshape(groups, -1, *rest)], dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, groups: int, q_rows_per_group: int, kv_rows_per_group: int):
    """Inverse of :func:`interleave_qkv`: (q, k, v) rows of ``groups`` query groups."""
    rest = qkv.shape[1:]
    parts = qkv.reshape(groups, -1, *rest).split([q_rows_per_group, kv_rows_per_group, kv_rows_per_group], dim=1)
    return tuple(p.reshape(-1, *rest) for p in parts)


# ---- HF -> Megatron ---------------------------------------------------------------------------

def _rows(rank: int, size: int) -> slice:
    return slice(rank * size, (rank + 1) * size)


def fc1_shard_parts(param: Param, read: Reader, layout: Layout, tp_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate_r, up_r): TP rank ``tp_rank``'s rows of gate_proj and up_proj."""
    rows = _rows(tp_rank, layout.arch.ffn_hidden_size // layout.tp)
    gate, up = param.hf_names
    return read(gate, rows), read(up, rows)


def _vocab_shard(name: str, read: Reader, layout: Layout, tp_rank: int) -> torch.Tensor:
    per_rank, vocab = layout.padded_vocab // layout.tp, layout.arch.vocab_size
    lo = min(tp_rank * per_rank, vocab)
    hi = min((tp_rank + 1) * per_rank, vocab)
    rows = read(name, slice(lo, hi))
    if hi - lo == per_rank:
        return rows
    shard = rows.new_zeros((per_rank, *rows.shape[1:]))
    shard[: hi - lo] = rows
    return shard


def to_megatron_shard(param: Param, read: Reader, layout: Layout, tp_rank: int) -> torch.Tensor:
    """TP rank ``tp_rank``'s shard of ``param``, in the dtype the reader returns."""
    a = layout.arch
    if param.kind == VOCAB:
        return _vocab_shard(param.hf_names[0], read, layout, tp_rank)
    if param.kind == REPLICATED:
        return read(param.hf_names[0], None)
    if param.kind == QKV:
        groups = a.num_query_groups // layout.tp
        q_name, k_name, v_name = param.hf_names
        q = read(q_name, _rows(tp_rank, groups * a.num_heads // a.num_query_groups * a.head_dim))
        k = read(k_name, _rows(tp_rank, groups * a.head_dim))
        v = read(v_name, _rows(tp_rank, groups * a.head_dim))
        return interleave_qkv(q, k, v, groups)
    if param.kind == FC1:
        return torch.cat(fc1_shard_parts(param, read, layout, tp_rank))
    full = read(param.hf_names[0], None)
    width = full.shape[1] // layout.tp
    return full[:, tp_rank * width:(tp_rank + 1) * width].contiguous()


# ---- Megatron -> HF ---------------------------------------------------------------------------

def _cat(tensors: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), dim=dim)


def from_megatron_shards(param: Param, shards: Sequence[torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """The full HF tensors of ``param`` from all its TP shards (in TP rank order).

    A vocabulary tensor may carry any padding (a checkpoint written at another TP): rows
    beyond the vocabulary are dropped.
    """
    a = layout.arch
    if len(shards) != layout.tp:
        raise ValueError(f"{param.name}: got {len(shards)} shards for tp={layout.tp}")
    if param.kind == VOCAB:
        return {param.hf_names[0]: _cat(shards, 0)[: a.vocab_size]}
    if param.kind == REPLICATED:
        return {param.hf_names[0]: shards[0]}
    if param.kind == COLUMNS:
        return {param.hf_names[0]: _cat(shards, 1)}
    if param.kind == FC1:
        halves = [s.chunk(2, dim=0) for s in shards]
        return {param.hf_names[0]: _cat([g for g, _ in halves], 0),
                param.hf_names[1]: _cat([u for _, u in halves], 0)}
    groups = a.num_query_groups // layout.tp
    q_rows = a.num_heads // a.num_query_groups * a.head_dim
    parts = [split_qkv(s, groups, q_rows, a.head_dim) for s in shards]
    return {name: _cat([p[j] for p in parts], 0) for j, name in enumerate(param.hf_names)}


# A piece of one TP shard and where it lands: (hf_name, index into the HF tensor, index into the shard).
Region = tuple[str, tuple[slice, ...], tuple[slice, ...]]


def shard_regions(param: Param, layout: Layout, tp_rank: int) -> list[Region]:
    """Where TP rank ``tp_rank``'s shard of ``param`` lands in the full HF tensors.

    The scatter form of :func:`from_megatron_shards`, for writers that each place their own
    shard (the shared-memory weight sync): every element of the HF tensors is covered by
    exactly one region of one rank. A replicated tensor is placed by TP rank 0 only; padded
    vocabulary rows land nowhere.
    """
    a, every = layout.arch, slice(None)
    if param.kind == REPLICATED:
        return [(param.hf_names[0], (every,), (every,))] if tp_rank == 0 else []
    if param.kind == VOCAB:
        per_rank = layout.padded_vocab // layout.tp
        lo, hi = min(tp_rank * per_rank, a.vocab_size), min((tp_rank + 1) * per_rank, a.vocab_size)
        return [(param.hf_names[0], (slice(lo, hi),), (slice(0, hi - lo),))] if hi > lo else []
    if param.kind == COLUMNS:
        width = layout.shard_shape(param)[1]
        return [(param.hf_names[0], (every, _rows(tp_rank, width)), (every, every))]
    if param.kind == FC1:
        rows = a.ffn_hidden_size // layout.tp
        return [(name, (_rows(tp_rank, rows),), (_rows(j, rows),)) for j, name in enumerate(param.hf_names)]
    groups = a.num_query_groups // layout.tp
    sizes = (a.num_heads // a.num_query_groups * a.head_dim, a.head_dim, a.head_dim)  # q, k, v rows per group
    regions, start = [], 0
    for group in range(tp_rank * groups, (tp_rank + 1) * groups):
        for name, rows in zip(param.hf_names, sizes):
            regions.append((name, (_rows(group, rows),), (slice(start, start + rows),)))
            start += rows
    return regions
