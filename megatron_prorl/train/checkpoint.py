"""Trainer checkpoints: atomic, verified, resumable, and readable by the checkpoint converter.

Layout of ``OUTPUT_DIR/checkpoints/step_00000012/``:

- ``model/``      policy weights, Megatron dist_checkpointing (reshardable to any TP x PP;
                  ``prorl-convert megatron-to-hf`` reads it)
- ``reference/``  the frozen reference policy, same format
- ``optimizer/``  Megatron optimizer state (same layout on resume), same format; or, for an
                  optimizer that has taken no step since it was (re-)initialised (a reset step,
                  or updates all skipped), only the marker file ``optimizer/FRESH``
- ``rng/rank_N.pt``  Python, NumPy, torch (CPU and CUDA) and Megatron RNG-tracker states of every rank
- ``trainer_state.json``  step, stage, actor counters, resets, sampler and reset-trigger state
- ``config.yaml``, ``hf/`` (config.json + tokenizer files), ``meta.json``
- ``manifest.json``  size and checksum of every other file, written last

A checkpoint is written under a hidden temporary name and renamed once every rank has finished
and its manifest is written; the ``latest`` file is replaced after that. Old checkpoints are
renamed to a hidden ``.trash-`` name before they are deleted. So a run killed at any moment
leaves only complete checkpoints under ``step_*`` names, and the next run removes the hidden
leftovers. Resuming takes the newest checkpoint (``latest`` lags it when a run stopped between
the two renames), verifies it against its manifest and falls back, saying so, to the newest one
that is intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from checkpoint_convert.checkpoint import (LATEST, STEP_PREFIX, CheckpointMeta, atomic_directory, copy_hf_metadata,
                                           load_model_state, newer_than_latest, on_first_rank, rank, save_model_state,
                                           save_sharded_state, step_checkpoints, verify_checkpoint, write_meta)
from checkpoint_convert.errors import ConversionError
from megatron_prorl.errors import UserError

log = logging.getLogger(__name__)

FRESH_OPTIMIZER = "FRESH"
TRASH_PREFIX = ".trash-"
# What a complete trainer checkpoint holds (checked for checkpoints without a manifest).
REQUIRED = ("trainer_state.json", "meta.json", "model/.metadata", "reference/.metadata")


class NoValidCheckpoint(UserError):
    """Every checkpoint of a run is damaged: resuming from none is not done silently."""


class CheckpointManager:
    """Step directories, the ``latest`` pointer, retention, and start-up repair; callers write
    the contents. Every method is collective over the job's ranks."""

    def __init__(self, root: str | Path, keep_last: int):
        self.root = Path(root)
        self.keep_last = max(1, keep_last)

    def path(self, step: int) -> Path:
        return self.root / f"{STEP_PREFIX}{step:08d}"

    def remove_leftovers(self) -> None:
        """Delete what a killed run left: half-written checkpoints, half-deleted old ones."""
        def clean():
            if not self.root.is_dir():
                return
            for entry in self.root.iterdir():
                if entry.name.startswith((TRASH_PREFIX, f".{STEP_PREFIX}")) or entry.name == f".{LATEST}.tmp":
                    log.warning("removing %s, left by an interrupted run", entry)
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

        on_first_rank(clean)

    def _candidates(self) -> list[Path]:
        """Every checkpoint, newest first (as rank 0 sees them). ``latest`` only says which one
        the run published last: a run stopped between publishing a checkpoint and updating the
        pointer leaves a newer complete one, which is taken (and said so)."""
        found: list = [None]
        if rank() == 0 and self.root.is_dir():
            found[0] = [str(p) for p in step_checkpoints(self.root)]
            pointer = self.root / LATEST
            named = pointer.read_text().strip() if pointer.is_file() else None
            newer = newer_than_latest(self.root, named) if named else None
            if newer is not None:
                log.warning("%s names %s, but %s is newer and complete (the run stopped before updating %s)",
                            LATEST, named, newer.name, LATEST)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(found, src=0)
        return [Path(p) for p in found[0] or []]

    def latest(self) -> Optional[Path]:
        """The newest intact checkpoint; None when there is none at all. A damaged one is
        reported (file and reason) and skipped; if every one is damaged, an error."""
        problems = []
        for path in self._candidates():
            problem = _damage(path)
            if problem is None:
                if problems:
                    log.warning("resuming from %s instead (the newest intact checkpoint)", path.name)
                return path
            log.warning("checkpoint %s is not usable: %s", path.name, problem)
            problems.append(f"{path.name}: {problem}")
        if problems:
            raise NoValidCheckpoint(f"{self.root}: no intact checkpoint to resume from ({'; '.join(problems)}); "
                                    "move the directory aside to start afresh")
        return None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """``write(tmp_dir)`` on every rank, publish it as step ``step`` with its manifest,
        point ``latest`` at it, then drop all but the newest ``keep_last``."""
        final = self.path(step)
        with atomic_directory(final, overwrite=True, manifest=True) as tmp:
            write(tmp)

        def point_and_prune():
            pointer_tmp = self.root / f".{LATEST}.tmp"
            pointer_tmp.write_text(final.name + "\n")
            os.replace(pointer_tmp, self.root / LATEST)
            for old in sorted(self.root.glob(f"{STEP_PREFIX}*"))[: -self.keep_last]:
                # Renamed first: a kill in the middle of deleting leaves a hidden leftover, never
                # a half-deleted directory under a checkpoint's name.
                trash = self.root / f"{TRASH_PREFIX}{old.name}"
                old.rename(trash)
                shutil.rmtree(trash)

        on_first_rank(point_and_prune)
        return final


def _damage(path: Path) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot be resumed from (collective); None if it can."""
    try:
        if not verify_checkpoint(path):
            missing = [p for p in REQUIRED if not (path / p).exists()]
            if missing:
                return f"incomplete, {path / missing[0]} is missing"
            log.warning("%s has no manifest (written before checkpoints had one): its files are not verified",
                        path.name)
    except ConversionError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------ contents
def save_actor(actor, ckpt_dir: Path) -> None:
    """Collective: policy, reference and optimizer state of every rank."""
    save_model_state(actor.policy_module, ckpt_dir / "model")
    save_model_state(actor.reference, ckpt_dir / "reference")
    if actor.optimizer_is_fresh():  # no state to save, and Megatron could not load an empty one
        def marker():
            (ckpt_dir / "optimizer").mkdir()
            (ckpt_dir / "optimizer" / FRESH_OPTIMIZER).write_text("no step since the optimizer was initialised\n")

        on_first_rank(marker)
        return
    # Saving consumes a sharded state dict: the optimizer's is built from a fresh one.
    model_sd = actor.policy_module.sharded_state_dict()
    save_sharded_state(actor.optimizer.sharded_state_dict(model_sd), ckpt_dir / "optimizer")


def load_actor(actor, ckpt_dir: Path) -> None:
    """Collective: the inverse of :func:`save_actor` (same layout for the optimizer)."""
    from megatron.core import dist_checkpointing

    load_model_state(actor.policy_module, ckpt_dir / "model")
    load_model_state(actor.reference, ckpt_dir / "reference")
    if (ckpt_dir / "optimizer" / FRESH_OPTIMIZER).is_file():
        actor.reinitialise_optimizer()
        return
    model_sd = actor.policy_module.sharded_state_dict()
    template = actor.optimizer.sharded_state_dict(model_sd, is_loading=True)
    with torch.no_grad():  # fp32 main params may be views of model params
        actor.optimizer.load_state_dict(dist_checkpointing.load(template, str(ckpt_dir / "optimizer")))


def _tracker():
    from megatron.core import tensor_parallel

    return tensor_parallel.get_cuda_rng_tracker()


def save_rng(ckpt_dir: Path) -> None:
    path = ckpt_dir / "rng"
    on_first_rank(lambda: path.mkdir(exist_ok=True))
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "megatron_tracker": _tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, path / f"rank_{rank()}.pt")


def load_rng(ckpt_dir: Path) -> None:
    # Older checkpoints hold the first three only.
    state = torch.load(ckpt_dir / "rng" / f"rank_{rank()}.pt", weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "megatron_tracker" in state:
        _tracker().set_states(state["megatron_tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_metadata(ckpt_dir: Path, trainer_state: dict, config_yaml: str, hf_dir: Path, meta: CheckpointMeta) -> None:
    """Trainer state, config, meta.json and the HF config + tokenizer (so the checkpoint converts
    with ``prorl-convert megatron-to-hf``), written by rank 0."""
    def write():
        (ckpt_dir / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        (ckpt_dir / "config.yaml").write_text(config_yaml)
        write_meta(ckpt_dir, meta)
        copy_hf_metadata(hf_dir, ckpt_dir / "hf")

    on_first_rank(write)


def load_trainer_state(ckpt_dir: Path) -> dict:
    return json.loads((ckpt_dir / "trainer_state.json").read_text())
