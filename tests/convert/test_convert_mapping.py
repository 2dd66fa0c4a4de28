"""The pure HF <-> Megatron mapping: names, shapes and shard math (no processes, no files)."""

from __future__ import annotations

import pytest
import torch

from checkpoint_convert import mapping as M
from checkpoint_convert.errors import ConversionError
from checkpoint_convert.arch import hf_arch


def make_arch(**overrides):
    cfg = dict(model_type="qwen2", num_hidden_layers=4, hidden_size=16, intermediate_size=24,
               num_attention_heads=8, num_key_value_heads=4, vocab_size=300)
    cfg.update(overrides)
    return hf_arch(cfg)


def random_hf(arch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in M.hf_shapes(arch).items()}


def reader(tensors):
    return lambda name, rows: tensors[name] if rows is None else tensors[name][rows]


def shards_of(param, layout, tensors):
    return [M.to_megatron_shard(param, reader(tensors), layout, r) for r in range(layout.tp)]


def param_named(layout, name):
    return next(p for p in layout.params if p.name == name)


def test_qkv_rows_are_interleaved_per_query_group_and_split_by_whole_groups():
    # 4 heads of dim 1 in 2 groups: each row is one head, labelled by its value.
    arch = make_arch(hidden_size=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=4)
    layout = M.Layout(arch, tp=2)
    q, k, v = torch.tensor([[10.], [11.], [12.], [13.]]), torch.tensor([[20.], [21.]]), torch.tensor([[30.], [31.]])
    tensors = {"model.layers.0.self_attn.q_proj.weight": q.expand(4, 4),
               "model.layers.0.self_attn.k_proj.weight": k.expand(2, 4),
               "model.layers.0.self_attn.v_proj.weight": v.expand(2, 4)}
    qkv = param_named(layout, "decoder.layers.0.self_attention.linear_qkv.weight")
    s0, s1 = shards_of(qkv, layout, tensors)
    assert s0[:, 0].tolist() == [10, 11, 20, 30]  # group 0: its q heads, then k, then v
    assert s1[:, 0].tolist() == [12, 13, 21, 31]  # group 1 on TP rank 1
    back = M.from_megatron_shards(qkv, [s0, s1], layout)
    assert all(torch.equal(back[n], tensors[n]) for n in qkv.hf_names)


def test_fc1_shards_gate_and_up_separately():
    arch = make_arch(intermediate_size=4)
    layout = M.Layout(arch, tp=2)
    gate = torch.arange(4.).unsqueeze(1).expand(4, 16)
    up = (100 + torch.arange(4.)).unsqueeze(1).expand(4, 16)
    fc1 = param_named(layout, "decoder.layers.1.mlp.linear_fc1.weight")
    s0, s1 = shards_of(fc1, layout, dict(zip(fc1.hf_names, (gate, up))))
    assert s0[:, 0].tolist() == [0, 1, 100, 101]
    assert s1[:, 0].tolist() == [2, 3, 102, 103]


def test_row_parallel_layers_split_columns():
    layout = M.Layout(make_arch(), tp=4)
    proj = param_named(layout, "decoder.layers.2.self_attention.linear_proj.weight")
    full = torch.randn(16, 16)
    shards = shards_of(proj, layout, {proj.hf_names[0]: full})
    assert [tuple(s.shape) for s in shards] == [(16, 4)] * 4
    assert torch.equal(shards[3], full[:, 12:])


def test_vocab_rows_are_zero_padded_and_the_padding_is_dropped_on_the_way_back():
    layout = M.Layout(make_arch(vocab_size=300), tp=4)  # padded to 512: 128 rows per rank
    assert layout.padded_vocab == 512
    emb = param_named(layout, "embedding.word_embeddings.weight")
    full = torch.randn(300, 16) + 5  # no zero rows of its own
    shards = shards_of(emb, layout, {emb.hf_names[0]: full})
    assert [tuple(s.shape) for s in shards] == [(128, 16)] * 4
    assert torch.equal(shards[2][:44], full[256:]) and not shards[2][44:].any()
    assert not shards[3].any()  # the last rank holds padding only
    assert torch.equal(M.from_megatron_shards(emb, shards, layout)[emb.hf_names[0]], full)
    # A checkpoint's global tensor padded for another TP (here 384 rows) maps back the same.
    padded = torch.cat([full, torch.zeros(84, 16)])
    assert torch.equal(M.from_megatron_shards(emb, [padded], M.Layout(layout.arch))[emb.hf_names[0]], full)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2), (4, 1), (4, 2)])
def test_every_parameter_round_trips_with_the_model_shapes(family, tied, tp, pp):
    arch = make_arch(model_type=family, tie_word_embeddings=tied)
    layout = M.Layout(arch, tp, pp)
    tensors = random_hf(arch)
    rebuilt = {}
    for param in layout.params:
        shards = shards_of(param, layout, tensors)
        assert all(tuple(s.shape) == layout.shard_shape(param) for s in shards), param.name
        if not param.tied_copy:
            rebuilt.update(M.from_megatron_shards(param, shards, layout))
    assert rebuilt.keys() == tensors.keys()
    assert all(torch.equal(rebuilt[n], tensors[n]) for n in tensors)


def test_pipeline_stages_renumber_layers_and_own_embedding_and_head():
    layout = M.Layout(make_arch(num_hidden_layers=4), tp=1, pp=2)
    stage0, stage1 = layout.stage_params(0), layout.stage_params(1)
    assert "embedding.word_embeddings.weight" in stage0 and "output_layer.weight" in stage1
    assert "decoder.final_layernorm.weight" in stage1
    layer3 = stage1["decoder.layers.1.mlp.linear_fc2.weight"]
    assert layer3.layer == 3 and layer3.hf_names == ("model.layers.3.mlp.down_proj.weight",)
    assert {p.name for p in stage0.values()} | {p.name for p in stage1.values()} == {p.name for p in layout.params}
    assert not {p.name for p in stage0.values()} & {p.name for p in stage1.values()}


def test_tied_embeddings_have_an_output_layer_only_as_the_last_stage_copy():
    tied = make_arch(tie_word_embeddings=True)
    assert "lm_head.weight" not in M.hf_shapes(tied)
    assert not any(p.name == "output_layer.weight" for p in M.Layout(tied, pp=1).params)
    [copy] = [p for p in M.Layout(tied, pp=2).params if p.name == "output_layer.weight"]
    assert copy.tied_copy and copy.hf_names == ("model.embed_tokens.weight",)
    assert M.checkpoint_key(copy) == "embedding.word_embeddings.weight"
    assert M.Layout(tied, pp=2).stage(copy) == 1
    assert M.is_ignored_hf_name("lm_head.weight", tied)
    assert not M.is_ignored_hf_name("lm_head.weight", make_arch())


def test_transformer_engine_names_are_aliases_and_the_checkpoint_keys():
    layout = M.Layout(make_arch(), pp=2)
    te = layout.param_for("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight", 1)
    assert te is layout.param_for("decoder.layers.1.input_layernorm.weight", 1)
    assert te.hf_names == ("model.layers.3.input_layernorm.weight",)
    assert M.checkpoint_key(te) == "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
    fc1_norm = layout.param_for("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", 0)
    assert fc1_norm.hf_names == ("model.layers.0.post_attention_layernorm.weight",)
    qkv = layout.param_for("decoder.layers.0.self_attention.linear_qkv.weight", 0)
    assert M.checkpoint_key(qkv) == "decoder.layers.self_attention.linear_qkv.weight"
    assert M.checkpoint_keys(te) == ("decoder.layers.self_attention.linear_qkv.layer_norm_weight",
                                     "decoder.layers.input_layernorm.weight")
    assert M.checkpoint_keys(qkv) == (M.checkpoint_key(qkv),)
    with pytest.raises(ConversionError, match="not part of the qwen2 mapping"):
        layout.param_for("decoder.layers.0.self_attention.linear_qkv.layer_norm_bias", 0)


def test_llama_has_no_qkv_bias():
    names = M.hf_shapes(make_arch(model_type="llama"))
    assert not any(n.endswith("_proj.bias") for n in names)
    assert "model.layers.0.self_attn.q_proj.bias" in M.hf_shapes(make_arch())


@pytest.mark.parametrize("tp,pp,field", [(3, 1, "num_attention_heads=8"), (8, 1, "num_key_value_heads"),
                                          (1, 3, "num_hidden_layers=4")])
def test_layouts_that_do_not_divide_the_model_are_rejected(tp, pp, field):
    with pytest.raises(ConversionError, match=field):
        M.Layout(make_arch(), tp, pp)


def test_config_rope_fields_of_both_transformers_generations():
    v4 = make_arch(model_type="llama", rope_theta=5e5, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    v5 = make_arch(model_type="llama", rope_parameters={
        "rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    assert v4 == v5 and v4.rope_theta == 5e5 and v4.rope_scaling == (8.0, 1.0, 4.0, 8192)
    assert make_arch(rope_parameters={"rope_theta": 1e6, "rope_type": "default"}).rope_theta == 1e6
    with pytest.raises(ConversionError, match="rope_scaling.rope_type='yarn'"):
        make_arch(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ConversionError, match="attention_bias"):
        make_arch(model_type="llama", attention_bias=True)
    with pytest.raises(ConversionError, match="model_type='mistral'"):
        make_arch(model_type="mistral")
