"""Megatron checkpoints of this project: their layout, atomic writing, and save/load of a live model.

    DIR/model/     megatron.core.dist_checkpointing save (torch_dist) of GPTModel.sharded_state_dict();
                   loadable at any TP x PP (dist_checkpointing reshards)
    DIR/hf/        config.json, tokenizer files and generation_config.json of the source, verbatim
    DIR/meta.json  {"format": "megatron-prorl", "version": 1, "tp", "pp", "dtype", "family"}

Trainer checkpoints add their own parts (optimizer/, reference/, ...) beside model/: write them
inside :func:`atomic_directory` (with :func:`save_model_state` for the model) so that a
checkpoint directory is either complete or absent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch.distributed as dist

from checkpoint_convert import dtypes
from checkpoint_convert.arch import HFArch, load_arch
from checkpoint_convert.errors import ConversionError

log = logging.getLogger(__name__)

FORMAT, VERSION = "megatron-prorl", 1
MODEL_DIR, HF_DIR, META_FILE = "model", "hf", "meta.json"
# Weight files stay behind when the rest of a HF directory is copied.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".ckpt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class CheckpointMeta:
    tp: int
    pp: int
    dtype: str
    family: str


def write_meta(ckpt_dir: Path, meta: CheckpointMeta) -> None:
    body = {"format": FORMAT, "version": VERSION, **asdict(meta)}
    (Path(ckpt_dir) / META_FILE).write_text(json.dumps(body, indent=2) + "\n")


def read_meta(ckpt_dir: os.PathLike) -> CheckpointMeta:
    path = Path(ckpt_dir) / META_FILE
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{ckpt_dir}: not a megatron-prorl checkpoint (no {META_FILE})") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if body.get("format") != FORMAT or body.get("version") != VERSION:
        raise ConversionError(f"{path}: format={body.get('format')!r} version={body.get('version')!r}; "
                              f"expected {FORMAT!r} version {VERSION}")
    try:
        return CheckpointMeta(tp=int(body["tp"]), pp=int(body["pp"]), dtype=str(body["dtype"]),
                              family=str(body["family"]))
    except KeyError as exc:
        raise ConversionError(f"{path}: missing field {exc}") from None


def checkpoint_arch(ckpt_dir: os.PathLike) -> HFArch:
    """The HFArch of a checkpoint, from its hf/config.json."""
    hf = Path(ckpt_dir) / HF_DIR
    if not (hf / "config.json").is_file():
        raise ConversionError(f"{ckpt_dir}: no {HF_DIR}/config.json")
    return load_arch(hf)


def copy_hf_metadata(src: os.PathLike, dst: os.PathLike) -> None:
    """Copy a HF directory's files except the weights (config, tokenizer, generation config...)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and not f.name.startswith(".") and not f.name.endswith(_WEIGHT_SUFFIXES) \
                and f.name not in _WEIGHT_INDEXES:
            shutil.copy2(f, dst / f.name)


def rank() -> int:
    """This process's rank (0 outside torch.distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    """A barrier over every rank (nothing to wait for outside torch.distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def check_writable(path: os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConversionError(f"{path} already exists (pass --overwrite / overwrite=True to replace it)")
    return path


@contextlib.contextmanager
def atomic_directory(path: os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; it becomes ``path`` only if the block succeeds.

    Collective when torch.distributed is initialised (rank 0 touches the file system, every rank
    waits for it), so all ranks can write their shards into the yielded directory.
    """
    path = check_writable(path, overwrite)
    tmp, old = path.parent / f".{path.name}.incomplete", path.parent / f".{path.name}.old"
    if rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed run
        tmp.mkdir(parents=True)
    barrier()
    try:
        yield tmp
        barrier()
    except BaseException:
        if rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank() == 0:
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def unwrap_model(model):
    """The GPTModel inside DDP / Float16Module wrappers (a one-element list is accepted)."""
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(f"got {len(model)} model chunks; virtual pipeline stages are not supported")
        model = model[0]
    while hasattr(model, "module"):
        model = model.module
    return model


def save_sharded_state(state, directory: os.PathLike) -> None:
    """dist_checkpointing save of a sharded state dict into ``directory`` (collective)."""
    from megatron.core import dist_checkpointing

    if rank() == 0:
        Path(directory).mkdir(parents=True, exist_ok=True)
    barrier()
    dist_checkpointing.save(state, str(directory))


def save_model_state(model, model_dir: os.PathLike) -> None:
    """dist_checkpointing save of the model's sharded state dict into ``model_dir`` (collective)."""
    save_sharded_state(unwrap_model(model).sharded_state_dict(), model_dir)


def save_model_checkpoint(model, ckpt_dir: os.PathLike, hf_dir: os.PathLike, overwrite: bool = False) -> CheckpointMeta:
    """Write a complete checkpoint of a live model (collective over all ranks).

    ``hf_dir`` supplies hf/ (its config.json must describe the model).
    """
    from megatron.core import parallel_state

    gpt = unwrap_model(model)
    arch = load_arch(hf_dir)
    meta = CheckpointMeta(tp=parallel_state.get_tensor_model_parallel_world_size(),
                          pp=parallel_state.get_pipeline_model_parallel_world_size(),
                          dtype=dtypes.name_of(gpt.config.params_dtype), family=arch.family)
    with atomic_directory(ckpt_dir, overwrite) as tmp:
        save_model_state(gpt, tmp / MODEL_DIR)
        if rank() == 0:
            copy_hf_metadata(hf_dir, tmp / HF_DIR)
            write_meta(tmp, meta)
    return meta


def load_model_checkpoint(model, ckpt_dir: os.PathLike) -> CheckpointMeta:
    """Load ``ckpt_dir``/model into a live model at this process's TP x PP (collective).

    A checkpoint written at another TP x PP is resharded by dist_checkpointing; the vocabulary
    padding of another TP is absorbed (padded rows load as zeros). ``_extra_state`` entries
    absent from the checkpoint (a TE model loading a local-spec checkpoint) are left as they are.
    """
    from megatron.core import parallel_state

    ckpt = Path(ckpt_dir)
    meta = read_meta(ckpt)
    here = (parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_pipeline_model_parallel_world_size())
    if here != (meta.tp, meta.pp) and rank() == 0:
        log.info("%s was written at TP%d x PP%d; resharding to TP%d x PP%d", ckpt, meta.tp, meta.pp, *here)
    load_model_state(model, ckpt / MODEL_DIR)
    return meta


def load_model_state(model, model_dir: os.PathLike) -> None:
    """Fill a live model from a dist_checkpointing directory written at any TP x PP (collective)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    gpt = unwrap_model(model)
    state, _, absent = dist_checkpointing.load(gpt.sharded_state_dict(), str(model_dir),
                                               strict=StrictHandling.RETURN_UNEXPECTED)
    absent = sorted(k for k in absent if not k.endswith("_extra_state"))
    if absent:
        raise ConversionError(f"{model_dir} lacks {len(absent)} tensor(s) the model needs, e.g. {absent[:3]}")
    missing, unexpected = gpt.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ConversionError(f"{model_dir}: state dict mismatch: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
