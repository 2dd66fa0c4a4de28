"""Trainer checkpoints: atomic, resumable, and readable by the checkpoint converter.

Layout of ``OUTPUT_DIR/checkpoints/step_00000012/``:

- ``model/``      policy weights, Megatron dist_checkpointing (reshardable to any TP x PP;
                  ``prorl-convert megatron-to-hf`` reads it)
- ``reference/``  the frozen reference policy, same format
- ``optimizer/``  Megatron optimizer state (same layout on resume), same format; or, for an
                  optimizer that has taken no step since it was (re-)initialised (a reset step,
                  or updates all skipped), only the marker file ``optimizer/FRESH``
- ``rng/rank_N.pt``  Python, NumPy and torch RNG states of every rank
- ``trainer_state.json``  step, stage, actor counters, resets, sampler and reset-trigger state
- ``config.yaml``, ``hf/`` (config.json + tokenizer files), ``meta.json``

A checkpoint is written under a temporary name and renamed when every rank has finished; the
``latest`` file is replaced last, so a run killed at any moment resumes from a complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from checkpoint_convert.checkpoint import (CheckpointMeta, atomic_directory, barrier, copy_hf_metadata,
                                           load_model_state, rank, save_model_state, save_sharded_state, write_meta)


FRESH_OPTIMIZER = "FRESH"


class CheckpointManager:
    """Step directories, the ``latest`` pointer and retention; callers write the contents."""

    def __init__(self, root: str | Path, keep_last: int):
        self.root = Path(root)
        self.keep_last = max(1, keep_last)

    def latest(self) -> Optional[Path]:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is not a complete checkpoint")
        return path

    def save(self, step: int, write) -> Path:
        """Collective: ``write(tmp_dir)`` on every rank, publish as step ``step``, then point
        ``latest`` at it and drop all but the newest ``keep_last``."""
        final = self.root / f"step_{step:08d}"
        with atomic_directory(final, overwrite=True) as tmp:
            write(tmp)
        if rank() == 0:
            pointer_tmp = self.root / ".latest.tmp"
            pointer_tmp.write_text(final.name + "\n")
            os.replace(pointer_tmp, self.root / "latest")
            for old in sorted(self.root.glob("step_*"))[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final


# ------------------------------------------------------------------------------ contents
def save_actor(actor, ckpt_dir: Path) -> None:
    """Collective: policy, reference and optimizer state of every rank."""
    save_model_state(actor.policy_module, ckpt_dir / "model")
    save_model_state(actor.reference, ckpt_dir / "reference")
    if actor.optimizer_is_fresh():  # no state to save, and Megatron could not load an empty one
        if rank() == 0:
            (ckpt_dir / "optimizer").mkdir()
            (ckpt_dir / "optimizer" / FRESH_OPTIMIZER).write_text("no step since the optimizer was initialised\n")
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


def save_rng(ckpt_dir: Path) -> None:
    path = ckpt_dir / "rng"
    if rank() == 0:
        path.mkdir(exist_ok=True)
    barrier()
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               path / f"rank_{rank()}.pt")


def load_rng(ckpt_dir: Path) -> None:
    state = torch.load(ckpt_dir / "rng" / f"rank_{rank()}.pt", weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_metadata(ckpt_dir: Path, trainer_state: dict, config_yaml: str, hf_dir: Path, meta: CheckpointMeta) -> None:
    """Rank 0: trainer state, config, meta.json and the HF config + tokenizer (so the checkpoint
    converts with ``prorl-convert megatron-to-hf``)."""
    if rank() != 0:
        return
    (ckpt_dir / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    (ckpt_dir / "config.yaml").write_text(config_yaml)
    write_meta(ckpt_dir, meta)
    copy_hf_metadata(hf_dir, ckpt_dir / "hf")


def load_trainer_state(ckpt_dir: Path) -> dict:
    return json.loads((ckpt_dir / "trainer_state.json").read_text())
