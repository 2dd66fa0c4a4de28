"""Megatron checkpoints of this project: their layout, atomic writing, and save/load of a live model.

    DIR/model/         megatron.core.dist_checkpointing save (torch_dist) of GPTModel.sharded_state_dict();
                       loadable at any TP x PP (dist_checkpointing reshards)
    DIR/hf/            config.json, tokenizer files and generation_config.json of the source
    DIR/meta.json      {"format": "megatron-prorl", "version": 1, "tp", "pp", "dtype", "family"}
    DIR/manifest.json  every other file's size and checksum, written last (checkpoint_convert.manifest)

Trainer checkpoints add their own parts (optimizer/, reference/, ...) beside model/: write them
inside :func:`atomic_directory` (with :func:`save_model_state` for the model) so that a
checkpoint directory is either complete (with its manifest) or absent. A training run keeps
them as ``RUN/checkpoints/step_00000012`` with a ``latest`` file naming the newest;
:func:`resolve_checkpoint` finds one from any of those paths.

Writes are in-process: the torch_dist files come from torch.distributed.checkpoint's own
writer threads (see :func:`save_sharded_state`), so no helper process exists that a signal to
the process group (as Slurm sends) could kill in the middle of a save.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch.distributed as dist

from checkpoint_convert import dtypes
from checkpoint_convert.arch import HFArch, load_arch
from checkpoint_convert.dist_layout import fsync_path
from checkpoint_convert.errors import ConversionError, is_disk_full
from checkpoint_convert.manifest import MANIFEST, verify_manifest, write_manifest

log = logging.getLogger(__name__)

FORMAT, VERSION = "megatron-prorl", 1
MODEL_DIR, HF_DIR, META_FILE = "model", "hf", "meta.json"
CHECKPOINTS_DIR, LATEST = "checkpoints", "latest"  # a training run's RUN/checkpoints/latest
STEP_PREFIX = "step_"
# The files of a Hugging Face model directory besides its weights: what hf/ keeps of a source
# directory and what an export holds (a README, data files... of the source stay behind).
HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
            "chat_template.jinja", "chat_template.json")


class CheckpointWriteError(ConversionError):
    """A checkpoint could not be written (the message names the directory and the cause)."""


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
    """Copy a HF directory's model files other than the weights (:data:`HF_FILES`)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in HF_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)


def step_checkpoints(checkpoints_dir: os.PathLike) -> list[Path]:
    """The ``step_*`` directories of a run's checkpoints/ directory, newest first."""
    return sorted((p for p in Path(checkpoints_dir).glob(f"{STEP_PREFIX}*") if p.is_dir()), reverse=True)


def newer_than_latest(checkpoints_dir: os.PathLike, named: str) -> Optional[Path]:
    """The newest complete checkpoint (published with its manifest, see :func:`atomic_directory`)
    newer than the one ``latest`` names, if any: a run stopped between publishing a checkpoint
    and updating the pointer leaves one."""
    newer = [p for p in step_checkpoints(checkpoints_dir) if p.name > named and (p / MANIFEST).is_file()]
    return newer[0] if newer else None


def resolve_checkpoint(path: os.PathLike) -> tuple[Path, str]:
    """The checkpoint a user means by ``path``, and how it was found: a checkpoint directory
    (with meta.json), a run's ``latest`` pointer file, its checkpoints/ directory or the run
    directory (both through their ``latest``, or a complete checkpoint newer than it names)."""
    p = Path(path)
    if (p / META_FILE).is_file():
        return p, "checkpoint directory"
    for pointer, how in ((p, "the latest pointer"), (p / LATEST, "its latest pointer"),
                         (p / CHECKPOINTS_DIR / LATEST, "the run's latest checkpoint")):
        if pointer.is_file() and pointer.name == LATEST:
            named = pointer.read_text().strip()
            newer = newer_than_latest(pointer.parent, named)
            if newer is not None:
                return newer, f"{how}: newer than {named}, which {LATEST} still names (its run stopped before updating it)"
            target = pointer.parent / named
            if not (target / META_FILE).is_file():
                raise ConversionError(f"{pointer} names {target.name}, which is not a checkpoint (no {META_FILE})")
            return target, how
    if not p.exists():
        raise ConversionError(f"{p}: no such directory")
    raise ConversionError(f"{p}: not a checkpoint (no {META_FILE}), nor a run or checkpoints directory with a "
                          f"{LATEST} pointer")


def verify_checkpoint(ckpt_dir: os.PathLike, only: Optional[tuple[str, ...]] = None) -> bool:
    """Check the files of a checkpoint against its manifest (collective over the ranks of a
    job). Raises CheckpointDamaged naming the file; False: no manifest (an older checkpoint)."""
    return verify_manifest(ckpt_dir, only)


def rank() -> int:
    """This process's rank (0 outside torch.distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    """A barrier over every rank (nothing to wait for outside torch.distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def on_first_rank(fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0 only, and raise on every rank if it failed there (a bare barrier
    after a failed rank-0 write would leave the other ranks waiting forever)."""
    error: Optional[BaseException] = None
    if rank() == 0:
        try:
            fn()
        except Exception as exc:
            error = exc
    if dist.is_initialized() and dist.get_world_size() > 1:
        holder = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(holder, src=0)
        if error is None and holder[0] is not None:
            raise CheckpointWriteError(f"rank 0 failed: {holder[0]}")
    if error is not None:
        raise error


_NEARLY_FULL = 1 << 20


def _free_bytes(directory: Path) -> int:
    try:
        stat = os.statvfs(directory)
    except OSError:
        return _NEARLY_FULL
    return stat.f_bavail * stat.f_frsize


def check_writable(path: os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConversionError(f"{path} already exists (pass --overwrite / overwrite=True to replace it)")
    return path


def temporary_names(path: Path) -> tuple[Path, Path]:
    """The hidden siblings :func:`atomic_directory` writes ``path`` through: never taken for a
    checkpoint, and safe to delete when no writer is running."""
    return path.parent / f".{path.name}.incomplete", path.parent / f".{path.name}.old"


@contextlib.contextmanager
def atomic_directory(path: os.PathLike, overwrite: bool = False, manifest: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; it becomes ``path`` only if the block succeeds.

    Collective when torch.distributed is initialised (rank 0 touches the file system, every rank
    waits for it), so all ranks can write their shards into the yielded directory. ``manifest``:
    hash every file into ``manifest.json`` (the last file written) before the rename. A full
    disk is reported as :class:`CheckpointWriteError` naming the directory; nothing stays behind.
    """
    path = check_writable(path, overwrite)
    tmp, old = temporary_names(path)

    def start():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed run
        tmp.mkdir(parents=True)

    def publish():
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        fsync_path(path.parent)
        shutil.rmtree(old, ignore_errors=True)

    try:
        on_first_rank(start)
        yield tmp
        barrier()
        if manifest:
            write_manifest(tmp)
        on_first_rank(publish)
    except BaseException as exc:
        # Some writers word it otherwise (torch.save: "file write failed"): ask the disk too,
        # before the partial files are removed.
        full = is_disk_full(exc) or _free_bytes(path.parent) < _NEARLY_FULL
        if rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise CheckpointWriteError(f"{path.parent}: no space left on device while writing {path.name}; "
                                       "nothing of it was kept") from exc
        raise
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
    """dist_checkpointing save of a sharded state dict into ``directory`` (collective), its
    torch_dist files written in this process (see :func:`_in_process_strategy`).

    The steps of megatron-core's ``dist_checkpointing.save`` (serialization.py, its synchronous
    path; 0.16.1 with the torch common strategy, and 0.17.0), with the same files, except that the
    two files rank 0 writes alone, common.pt and metadata.json, are written through
    :func:`on_first_rank`: when one fails there (a full disk), every rank raises, where
    Megatron's save leaves the other ranks waiting in the collective torch_dist write (they
    fail later, on a lost peer or a timeout) and recreating the directory rank 0 cleared.
    """
    import torch
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess
    from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME

    on_first_rank(lambda: Path(directory).mkdir(parents=True, exist_ok=True))
    sharded, common = save_preprocess(state, validate_access_integrity=True)  # collective checks
    # common.pt is torch.save of the common state on rank 0, as 0.16.1's
    # TorchCommonSaveStrategy.save_common and 0.17.0's save_common write it (strategies/common.py;
    # 0.17.0 removed the class).
    on_first_rank(lambda: torch.save(common, Path(directory) / COMMON_STATE_FNAME))
    strategy = _in_process_strategy()
    with _thread_errors() as caught:
        try:
            strategy.save(sharded, str(directory))
        except BaseException as exc:
            if caught:  # a writer thread's own error (e.g. no space left) is the cause
                raise exc from caught[0]
            raise
    if caught:
        raise caught[0]
    on_first_rank(lambda: save_config(CheckpointingConfig(strategy.backend, strategy.version), str(directory)))


@contextlib.contextmanager
def _thread_errors() -> Iterator[list]:
    """Collect the exceptions of threads that die in this block (torch.distributed.checkpoint's
    writer threads), instead of printing their tracebacks: the save re-raises them."""
    caught: list = []
    previous = threading.excepthook
    threading.excepthook = lambda args: caught.append(args.exc_value)
    try:
        yield caught
    finally:
        threading.excepthook = previous


def _in_process_strategy():
    """Megatron-Core's torch_dist save strategy, writing through torch.distributed.checkpoint's
    own FileSystemWriter (threads, fsynced files) instead of Megatron's FileSystemWriterAsync.

    megatron-core 0.16.1 and 0.17.0 (dist_checkpointing/strategies/filesystem_async.py) write every
    save through a results queue served by a spawned Manager process, created at the first save and
    kept for the whole run, plus a forked writer process per file: a SIGTERM or SIGUSR1 sent to
    the process group (as Slurm sends them) kills the Manager, and every later save fails with
    EOFError/BrokenPipeError; a killed rank leaves the Manager behind. The files are the same:
    TorchDistSaveShardedStrategy.async_save (strategies/torch.py, 0.16.1 and 0.17.0) translates the
    sharded state dict with _replace_state_dict_keys_with_sharded_keys and mcore_to_pyt_state_dict
    and plans it with MCoreSavePlanner, as here; only the writer differs (FileSystemWriterAsync is
    a subclass of FileSystemWriter, with the same file names).
    """
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.strategies.torch import (MCoreSavePlanner, TorchDistSaveShardedStrategy,
                                                                   _replace_state_dict_keys_with_sharded_keys,
                                                                   mcore_to_pyt_state_dict)

    class InProcessTorchDistSave(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir):
            sharded, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
            dcp.save(mcore_to_pyt_state_dict(sharded, False),
                     storage_writer=dcp.FileSystemWriter(checkpoint_dir, thread_count=self.thread_count,
                                                         sync_files=True),
                     planner=MCoreSavePlanner(dedup_replicated_tensors=not self.keep_only_main_replica,
                                              flatten_state_dict=False))

    return InProcessTorchDistSave("torch_dist", 1)


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
    with atomic_directory(ckpt_dir, overwrite, manifest=True) as tmp:
        save_model_state(gpt, tmp / MODEL_DIR)

        def metadata():
            copy_hf_metadata(hf_dir, tmp / HF_DIR)
            write_meta(tmp, meta)

        on_first_rank(metadata)
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
