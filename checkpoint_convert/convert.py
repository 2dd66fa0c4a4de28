"""Offline conversions, in one process: a HF directory to a Megatron checkpoint, and back.

:func:`hf_to_megatron` writes the checkpoint of every TP x PP rank from a single process. It
describes each rank's shards exactly as that rank's ``GPTModel.sharded_state_dict()`` would
(:mod:`checkpoint_convert.dist_layout`, checked against the live model in the tests) and
writes them as dist_checkpointing's torch_dist files itself. Spawning TP*PP ranks instead
would start TP*PP interpreters and random-initialise a model on each only to overwrite it, to
write the same bytes; ``dist_checkpointing.save`` from one process would import all of
Megatron-Core and start writer processes, seconds of a command that is I/O-bound. Shards are
cut by the writer threads as they store them: plain row ranges of a HF tensor go to the file
straight from a memory map of the source, only reshuffled ones (qkv, row-parallel columns,
padded vocabulary rows, dtype casts) are copied, one at a time.

:func:`megatron_to_hf` builds no model either: it reads the checkpoint's global tensors a few
decoder layers at a time, assembled from whatever TP x PP wrote them (each record read
straight into its place in one of two reused staging buffers), and streams them into
safetensors files on a second thread while it reads the next ones, so its working set is
about twice ``LOAD_BYTES``.

Both write into a temporary directory renamed into place at the end (never half-written),
and return a :class:`Summary` (tensors, bytes, seconds, GB/s).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Iterator, Optional

import torch

from checkpoint_convert import dtypes
from checkpoint_convert.arch import load_arch
from checkpoint_convert.checkpoint import (HF_DIR, META_FILE, MODEL_DIR, CheckpointMeta, atomic_directory,
                                           check_writable, checkpoint_arch, copy_hf_metadata, read_meta,
                                           resolve_checkpoint, verify_checkpoint, write_meta)
from checkpoint_convert.dist_layout import (ExtraState, Record, TorchDistReader, extra_state_bytes, layout_entries,
                                            write_torch_dist)
from checkpoint_convert.errors import ConversionError
from checkpoint_convert.mapping import (FC1, VOCAB, Layout, Param, checkpoint_key, checkpoint_keys, fc1_shard_parts,
                                        from_megatron_shards, hf_shapes, to_megatron_shard)
from checkpoint_convert.safetensors_io import HFWeights, SafetensorsWriter
from checkpoint_convert.staging import Staging

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default
# megatron_to_hf reads this many bytes of decoder layers at a time: a bounded working set.
LOAD_BYTES = 512 << 20


@dataclass(frozen=True)
class Summary:
    what: str
    tensors: int
    nbytes: int
    seconds: float

    def line(self) -> str:
        rate = self.nbytes / 1e9 / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.what}: {self.tensors} tensors, {self.nbytes / 1e9:.3f} GB in {self.seconds:.1f} s "
                f"({rate:.2f} GB/s)")


def _progress(total: int, desc: str, show: Optional[bool]):
    from tqdm import tqdm

    # None: a bar only on a terminal.
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr,
                disable=None if show is None else not show, leave=False)


def _target_dtype(dtype: Optional[str], found: set[torch.dtype], where: str) -> torch.dtype:
    if dtype is not None:
        return dtypes.to_torch(dtype)
    if len(found) != 1:
        raise ConversionError(f"{where}: tensors have mixed dtypes {sorted(map(str, found))}; pass --dtype")
    return next(iter(found))


def _records(layout: Layout, read, dtype: torch.dtype) -> list[Record]:
    """Every record of the checkpoint of ``layout``: the main replica of each rank's entries,
    each shard cut from the HF tensors (through ``read``) only when the writer asks for it, and
    cast to ``dtype`` once cut (casting whole tensors first would cast each rank's rows again)."""

    def cut(param: Param, tp_rank: int, part: int):
        if param.kind == FC1:  # stored as its gate and up halves
            return lambda: fc1_shard_parts(param, read, layout, tp_rank)[part].to(dtype)
        return lambda: to_megatron_shard(param, read, layout, tp_rank).to(dtype)

    records = []
    for param in layout.params:
        for tp_rank in range(layout.tp):
            for entry in layout_entries(param, layout, tp_rank, dtype).values():
                if isinstance(entry, ExtraState):
                    if entry.is_main:
                        records.append(Record(entry.unique_key, None, 0, extra_state_bytes))
                    continue
                records += [Record(frag.key, frag, math.prod(frag.local_shape) * dtype.itemsize,
                                   cut(param, tp_rank, part))
                            for part, frag in enumerate(entry) if frag.is_main]
    return records


def hf_to_megatron(hf_dir: os.PathLike, out_dir: os.PathLike, tp: int = 1, pp: int = 1,
                   dtype: Optional[str] = None, overwrite: bool = False,
                   progress: Optional[bool] = None) -> Summary:
    """Convert a HF directory into a Megatron checkpoint for TP ``tp`` x PP ``pp``."""
    start = time.perf_counter()
    src = Path(hf_dir)
    arch = load_arch(src)
    layout = Layout(arch, tp, pp)
    shapes = hf_shapes(arch)
    with HFWeights(src) as weights:
        weights.validate(arch)
        target = _target_dtype(dtype, weights.dtypes(shapes), str(src))
        check_writable(out_dir, overwrite)  # before any work; atomic_directory checks again
        nbytes = sum(math.prod(s) for s in shapes.values()) * target.itemsize

        # Mapped, not copied: shards that are plain row ranges of a HF tensor go to the file
        # straight from the page cache; only reshuffled (or cast) ones get new memory.
        records = _records(layout, weights.map, target)
        total = sum(r.nbytes for r in records)
        with atomic_directory(out_dir, overwrite, manifest=True) as tmp, \
                _progress(total, "writing", progress) as bar:
            lock = threading.Lock()

            def written(n: int) -> None:
                with lock:
                    bar.update(n)

            (tmp / MODEL_DIR).mkdir()
            write_torch_dist(records, tmp / MODEL_DIR, written)
            copy_hf_metadata(src, tmp / HF_DIR)
            write_meta(tmp, CheckpointMeta(tp=tp, pp=pp, dtype=dtypes.name_of(target), family=arch.family))
    return Summary(f"hf-to-megatron (TP{tp} x PP{pp})", len(shapes), nbytes, time.perf_counter() - start)


def _plan_reads(layout: Layout, tensors: dict[str, tuple], where: Path) -> list[tuple[Param, str, tuple[int, ...]]]:
    """(param, key, global shape) of every exported parameter, checked against the config."""
    arch, plan = layout.arch, []
    for param in layout.params:
        key = next((k for k in checkpoint_keys(param) if k in tensors), None)
        if key is None:
            raise ConversionError(f"{where}: no tensor {checkpoint_key(param)!r} (needed for "
                                  f"{param.hf_names[0]!r}); is this a checkpoint of this config?")
        shape = tensors[key][0]
        expected = layout.shard_shape(param)
        if param.layer is not None:
            expected = (arch.num_layers, *expected)
        ok = shape == expected
        if param.kind == VOCAB:  # padded to another TP's multiple
            ok = len(shape) == 2 and shape[0] >= arch.vocab_size and shape[1] == arch.hidden_size
        if not ok:
            raise ConversionError(f"{where}: tensor {key!r} has shape {shape}; its config.json implies {expected}")
        plan.append((param, key, shape))
    return plan


def _load_groups(plan: list, tensors: dict[str, tuple], budget: int = LOAD_BYTES) -> Iterator[list]:
    """The plan cut into reads: the tensors outside the decoder layers,
    and runs of whole layers of up to ``budget`` bytes (at least one layer)."""
    layer_bytes = sum(math.prod(shape[1:]) * tensors[key][1].itemsize
                      for param, key, shape in plan if param.layer == 0)
    per_load = max(1, budget // max(layer_bytes, 1))
    for _, group in groupby(plan, key=lambda p: None if p[0].layer is None else p[0].layer // per_load):
        yield list(group)


def _set_config_dtype(config_path: Path, dtype: torch.dtype) -> None:
    """Make config.json declare the dtype the weights are stored in."""
    cfg = json.loads(config_path.read_text())
    name = str(dtype).removeprefix("torch.")
    keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]
    if all(cfg.get(k) == name for k in keys):
        return
    cfg.update({k: name for k in keys})
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def megatron_to_hf(ckpt_dir: os.PathLike, out_dir: os.PathLike, dtype: Optional[str] = None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
                   progress: Optional[bool] = None) -> Summary:
    """Convert a Megatron checkpoint (any TP x PP; a run, its checkpoints/ or ``latest`` name
    one, see resolve_checkpoint) into a HF directory of sharded safetensors. The files read are
    checked against the checkpoint's manifest first."""
    start = time.perf_counter()
    ckpt, how = resolve_checkpoint(ckpt_dir)
    log.info("checkpoint %s (%s)", ckpt, how)
    if not verify_checkpoint(ckpt, only=(MODEL_DIR, HF_DIR, META_FILE)):
        log.warning("%s has no manifest (written before checkpoints had one): its files are not verified", ckpt)
    meta = read_meta(ckpt)
    arch = checkpoint_arch(ckpt)
    if meta.family != arch.family:
        raise ConversionError(f"{ckpt}: meta.json says family {meta.family!r}, {HF_DIR}/config.json {arch.family!r}")
    layout = Layout(arch)  # checkpoint tensors are global: read them as TP1 x PP1
    model_dir = ckpt / MODEL_DIR
    shapes = hf_shapes(arch)
    check_writable(out_dir, overwrite)
    with TorchDistReader(model_dir) as reader:
        tensors = reader.tensors
        plan = _plan_reads(layout, tensors, model_dir)
        target = _target_dtype(dtype, {tensors[key][1] for _, key, _ in plan}, str(model_dir))
        entries = [(n, shapes[n], target) for param, _, _ in plan for n in param.hf_names]
        with atomic_directory(out_dir, overwrite) as tmp:
            writer = SafetensorsWriter(tmp, entries, max_shard_bytes)
            with _progress(writer.total_bytes, "writing", progress) as bar, ThreadPoolExecutor(1) as pool:

                def write(items: list[tuple[str, torch.Tensor]]) -> None:
                    for name, t in items:
                        writer.write(name, t)
                        bar.update(t.numel() * t.element_size())

                # Group i is written on a thread while group i+1 is read: two in memory at most,
                # each read into its own reused staging buffer.
                staging, pending = (Staging(), Staging()), None
                for i, group in enumerate(_load_groups(plan, tensors)):
                    outs = staging[i % 2].tensors([(reader.read_shape(key, param.layer), tensors[key][1])
                                                   for param, key, _ in group])
                    items = [(name, t.to(target)) for (param, key, _), out in zip(group, outs)
                             for name, t in from_megatron_shards(param, [reader.read(key, param.layer, out)],
                                                                 layout).items()]
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(write, items)
                if pending is not None:
                    pending.result()
            writer.close()
            copy_hf_metadata(ckpt / HF_DIR, tmp)
            _set_config_dtype(tmp / "config.json", target)
    return Summary("megatron-to-hf", len(entries), writer.total_bytes, time.perf_counter() - start)
