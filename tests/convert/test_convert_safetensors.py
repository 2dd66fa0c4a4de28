"""The safetensors reader and streaming writer, checked against the safetensors library itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoint_convert.errors import ConversionError
from checkpoint_convert.safetensors_io import INDEX_FILE, SINGLE_FILE, HFWeights, SafetensorsWriter
from checkpoint_convert.arch import hf_arch

TENSORS = {
    "a": torch.randn(5, 3).to(torch.bfloat16),
    "b": torch.randn(7),
    "c": torch.randn(2, 3, 4).to(torch.float16),
    "d": torch.arange(6, dtype=torch.int64).reshape(3, 2),
    "e": torch.empty(0, 4),
}


def write(out, tensors, max_shard_bytes):
    writer = SafetensorsWriter(out, [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()], max_shard_bytes)
    for name, t in tensors.items():
        writer.write(name, t)
    writer.close()


def read_with_safetensors(out):
    index = out / INDEX_FILE
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [SINGLE_FILE]
    got = {}
    for f in files:
        with safe_open(str(out / f), "pt") as st:
            assert st.metadata() == {"format": "pt"}
            got.update({k: st.get_tensor(k) for k in st.keys()})
    return got


@pytest.mark.parametrize("max_shard_bytes,files", [(10**6, 1), (40, 4)])
def test_writer_output_is_read_back_by_safetensors(tmp_path, max_shard_bytes, files):
    write(tmp_path, TENSORS, max_shard_bytes)
    got = read_with_safetensors(tmp_path)
    assert got.keys() == TENSORS.keys()
    assert all(got[n].dtype == t.dtype and torch.equal(got[n], t) for n, t in TENSORS.items())
    written = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(written) == files
    if files == 1:
        assert written == [SINGLE_FILE] and not (tmp_path / INDEX_FILE).exists()
    else:
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in TENSORS.values())
        assert set(index["weight_map"].values()) == set(written)


def test_writer_refuses_tensors_out_of_plan(tmp_path):
    writer = SafetensorsWriter(tmp_path, [("a", (2,), torch.float32), ("b", (2,), torch.float32)], 10**6)
    with pytest.raises(ValueError, match="expected a"):
        writer.write("b", torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected a \(2,\) torch.float32"):
        writer.write("a", torch.zeros(3))
    writer.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="1 planned tensor"):
        writer.close()


def test_reader_reads_rows_of_files_written_by_safetensors(tmp_path):
    save_file({k: v for k, v in TENSORS.items()}, str(tmp_path / SINGLE_FILE))
    with HFWeights(tmp_path) as w:
        for name, t in TENSORS.items():
            assert torch.equal(w.read(name), t) and w.read(name).dtype == t.dtype
        assert torch.equal(w.read("a", slice(1, 4)), TENSORS["a"][1:4])
        assert torch.equal(w.read("c", slice(1, 2)), TENSORS["c"][1:2])
        assert w.read("b", slice(7, 7)).shape == (0,)
        with pytest.raises(ConversionError, match="no tensor 'z'"):
            w.read("z")


def test_reader_follows_a_sharded_index(tmp_path):
    write(tmp_path, TENSORS, 40)
    with HFWeights(tmp_path) as w:
        assert w.tensors.keys() == TENSORS.keys()
        assert torch.equal(w.read("d", slice(2, 3)), TENSORS["d"][2:])


def test_reader_reports_bad_directories(tmp_path):
    with pytest.raises(ConversionError, match="no model.safetensors or model.safetensors.index.json"):
        HFWeights(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="only safetensors weights are supported"):
        HFWeights(tmp_path)

    write(tmp_path, TENSORS, 40)
    (tmp_path / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00004.safetensors: file not found"):
        HFWeights(tmp_path)


def test_reader_detects_truncated_and_corrupt_files(tmp_path):
    save_file(TENSORS, str(tmp_path / SINGLE_FILE))
    data = (tmp_path / SINGLE_FILE).read_bytes()
    (tmp_path / SINGLE_FILE).write_bytes(data[:-10])
    with pytest.raises(ConversionError, match="truncated"):
        HFWeights(tmp_path)
    (tmp_path / SINGLE_FILE).write_bytes(b"\x00" * 4)
    with pytest.raises(ConversionError, match="not a safetensors file"):
        HFWeights(tmp_path)


def test_validate_names_the_tensor_and_file_at_fault(tmp_path):
    arch = hf_arch(dict(model_type="llama", num_hidden_layers=1, hidden_size=8, intermediate_size=12,
                        num_attention_heads=2, num_key_value_heads=1, vocab_size=10))
    from checkpoint_convert.mapping import hf_shapes

    good = {n: torch.zeros(s) for n, s in hf_shapes(arch).items()}
    path = tmp_path / SINGLE_FILE
    save_file(good, str(path))
    HFWeights(tmp_path).validate(arch)

    save_file({**good, "model.layers.0.mlp.up_proj.weight": torch.zeros(13, 8)}, str(path))
    with pytest.raises(ConversionError, match=r"model.safetensors: tensor 'model.layers.0.mlp.up_proj.weight' has "
                                              r"shape \(13, 8\), config.json implies \(12, 8\)"):
        HFWeights(tmp_path).validate(arch)
    save_file({k: v for k, v in good.items() if k != "lm_head.weight"}, str(path))
    with pytest.raises(ConversionError, match="missing, e.g. \\['lm_head.weight'\\]"):
        HFWeights(tmp_path).validate(arch)
    save_file({**good, "model.layers.0.self_attn.o_proj.bias": torch.zeros(8)}, str(path))
    with pytest.raises(ConversionError, match="o_proj.bias'\\] are not part of a llama model"):
        HFWeights(tmp_path).validate(arch)
    save_file({**good, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(2)}, str(path))
    HFWeights(tmp_path).validate(arch)  # a buffer some old checkpoints carry: ignored


def test_map_gives_the_same_rows_as_read(tmp_path):
    write(tmp_path, TENSORS, 40)
    with HFWeights(tmp_path) as w:
        for name, t in TENSORS.items():
            mapped = w.map(name)
            assert mapped.dtype == t.dtype and torch.equal(mapped, t)
        assert torch.equal(w.map("a", slice(2, 5)), TENSORS["a"][2:5])
        assert w.map("b", slice(3, 3)).shape == (0,)
        rows = w.map("c", slice(1, 2))
        assert rows.untyped_storage().nbytes() == rows.numel() * rows.element_size()  # no view of a bigger buffer
