"""TorchDistReader: records read straight into place equal what torch.load gives, whatever layout
wrote them, and reads into a caller's buffer are checked."""

from __future__ import annotations

import pytest
import torch
from convert_jobs import ckpt_name

from checkpoint_convert.dist_layout import TorchDistReader


def read_all(directory, raw: bool, monkeypatch) -> tuple[dict, int]:
    calls = {"raw": 0}
    original = TorchDistReader._raw_offset

    def counting(self, *args):
        offset = original(self, *args) if raw else None
        calls["raw"] += offset is not None
        return offset

    monkeypatch.setattr(TorchDistReader, "_raw_offset", counting)
    out = {}
    with TorchDistReader(directory) as reader:
        for key, (shape, _) in reader.tensors.items():
            if key.startswith("decoder.layers."):
                for layer in range(shape[0]):
                    out[key, layer] = reader.read(key, layer).clone()
            else:
                out[key, None] = reader.read(key).clone()
    monkeypatch.undo()
    return out, calls["raw"]


@pytest.mark.parametrize("tp, pp", [(1, 1), (4, 2)])
def test_raw_reads_equal_torch_load_at_any_layout(offline, monkeypatch, tp, pp):
    root, _ = offline
    directory = root / "ckpt" / ckpt_name("qwen2", tp, pp) / "model"
    raw, used = read_all(directory, True, monkeypatch)
    loaded, _ = read_all(directory, False, monkeypatch)
    assert used > 0  # the checkpoint's records are plain tensors: read straight into place
    assert raw.keys() == loaded.keys()
    assert [k for k in raw if not torch.equal(raw[k], loaded[k])] == []


def test_reading_into_a_wrong_buffer_is_refused(offline):
    root, _ = offline
    with TorchDistReader(root / "ckpt" / ckpt_name("qwen2", 2, 1) / "model") as reader:
        key = "embedding.word_embeddings.weight"
        shape, dtype = reader.tensors[key]
        out = torch.empty(shape, dtype=dtype)
        assert reader.read(key, out=out) is out
        with pytest.raises(ValueError, match="embedding.word_embeddings.weight: out is"):
            reader.read(key, out=torch.empty(shape[0] - 1, shape[1], dtype=dtype))


def _described(metadata) -> tuple[dict, dict]:
    """What TorchDistReader takes from the metadata: tensors with their chunks, and records."""
    tensors = {k: (tuple(m.size), m.properties.dtype, sorted((tuple(c.offsets), tuple(c.sizes)) for c in m.chunks))
               for k, m in metadata.state_dict_metadata.items() if hasattr(m, "chunks")}
    records = {(i.fqn, tuple(i.offset) if i.offset is not None else None):
               (s.relative_path, s.offset, s.length, s.transform_descriptors)
               for i, s in metadata.storage_data.items()}
    return tensors, records


@pytest.mark.parametrize("writer", ["ours", "megatron"])
def test_metadata_read_without_the_package_equals_torch_reader(offline, writer):
    from torch.distributed.checkpoint import FileSystemReader

    from checkpoint_convert.dist_layout import read_dcp_metadata

    root, _ = offline
    if writer == "ours":
        directory = root / "ckpt" / ckpt_name("llama-tied", 4, 2) / "model"
    else:  # written by dist_checkpointing.save (the trainer's path)
        directory = root / "megatron_writer" / ckpt_name("llama-tied", 4, 2) / "model"
    light = read_dcp_metadata(directory / ".metadata")
    assert type(light).__module__ == "checkpoint_convert.dist_layout"  # the stand-ins, not the fallback
    assert _described(light) == _described(FileSystemReader(str(directory)).read_metadata())
