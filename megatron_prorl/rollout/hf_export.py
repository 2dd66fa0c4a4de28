"""Streamed weight buckets -> a Hugging Face checkpoint directory.

Used by engines that can only (re)load weights from disk (TensorRT-LLM's ``rebuild`` refresh):
each bucket becomes one safetensors shard, with the index, ``config.json`` and the tokenizer /
generation files of the source directory next to them, so ``from_pretrained``-style loaders
read it like any downloaded checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

from safetensors.torch import save_file

from megatron_prorl.rollout.base import Bucket, SyncStats

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INDEX_NAME = "model.safetensors.index.json"


def engine_named_tensors(bucket: Bucket, tie_word_embeddings: bool) -> Bucket:
    """The bucket as a Hugging Face checkpoint names it: with tied embeddings the output
    projection is the embedding, and checkpoints (and loaders) carry only the latter."""
    if not tie_word_embeddings:
        return list(bucket)
    return [(name, tensor) for name, tensor in bucket if name != "lm_head.weight"]


def _is_weight_file(path: Path) -> bool:
    return path.name.endswith(WEIGHT_SUFFIXES) or path.name == INDEX_NAME or path.name.endswith(".index.json")


def write_hf_dir(out_dir: str | Path, hf_config: dict, buckets: Iterable[Bucket],
                 copy_from: str | Path | None = None) -> SyncStats:
    """Write ``buckets`` as shards ``model-00001.safetensors``... plus index and config into
    ``out_dir`` (old weight files there are removed first). Non-weight files of ``copy_from``
    (tokenizer, generation config, chat template) are copied along."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file() and _is_weight_file(old):
            old.unlink()
    if copy_from is not None and Path(copy_from).resolve() != out.resolve():
        for src in Path(copy_from).iterdir():
            if src.is_file() and not _is_weight_file(src) and src.name != "config.json":
                shutil.copy2(src, out / src.name)

    stats = SyncStats()
    weight_map: dict[str, str] = {}
    for bucket in buckets:
        shard = f"model-{stats.buckets + 1:05d}.safetensors"
        tensors = {}
        for name, tensor in bucket:
            if name in weight_map:
                raise ValueError(f"weight '{name}' was sent twice in one sync")
            tensors[name] = tensor.detach().to("cpu").contiguous()
            weight_map[name] = shard
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        stats.buckets += 1
        stats.tensors += len(bucket)
        stats.bytes += sum(t.nbytes for _, t in bucket)
    if not weight_map:
        raise ValueError(f"no weights to write into {out}")
    (out / INDEX_NAME).write_text(json.dumps(
        {"metadata": {"total_size": stats.bytes}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    return stats
