"""Trainer checkpoints: atomic, verified, resumable, and readable by the checkpoint converter.

Layout of ``OUTPUT_DIR/checkpoints/step_00000012/``:

- ``model/``      policy weights, Megatron dist_checkpointing (reshardable to any TP x PP;
                  ``prorl-convert megatron-to-hf`` reads it)
- ``reference/``  the frozen reference policy, same format
- ``optimizer/``  Megatron optimizer state, same format, in model space (each parameter's Adam
                  moments, fp32 master copy and step keyed like the parameter): reshardable to
                  any TP x PP x DP, for the plain and the distributed optimizer alike (see
                  :data:`DIST_OPT_METADATA`); or, for an optimizer that has taken no step since it
                  was (re-)initialised (a reset step, or updates all skipped), only the marker
                  file ``optimizer/FRESH``
- ``rng/rank_N.pt``  Python, NumPy, torch (CPU and CUDA) and Megatron RNG-tracker states of every
                  rank (restored at the same layout; re-derived at another, see the trainer)
- ``trainer_state.json``  step, stage, actor counters, resets, sampler and reset-trigger state,
                  the layout that wrote it (:class:`Layout`) and the layout changes so far
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

import contextlib
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
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


# ------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """The parallel layout a checkpoint was written at, and which optimizer wrote its state."""

    tp: int
    pp: int
    dp: int
    optimizer: str = "plain"  # or "distributed" (Megatron-Core's DistributedOptimizer)

    def __str__(self) -> str:
        return f"TP{self.tp} x PP{self.pp} x DP{self.dp}"

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoint_layout(ckpt_dir: Path) -> Layout:
    """The layout recorded in a trainer checkpoint. Checkpoints from before it was recorded:
    TP and PP from meta.json, DP from the number of per-rank RNG files, the plain optimizer
    (the only one whose state such checkpoints could hold)."""
    from checkpoint_convert.checkpoint import read_meta

    state = load_trainer_state(ckpt_dir)
    if "layout" in state:
        return Layout(**state["layout"])
    meta = read_meta(ckpt_dir)
    ranks = len(list((ckpt_dir / "rng").glob("rank_*.pt"))) or meta.tp * meta.pp
    return Layout(meta.tp, meta.pp, max(1, ranks // (meta.tp * meta.pp)))


# ------------------------------------------------------------------------------ contents
# How the distributed optimizer saves its state (megatron-core 0.16.1, and 0.17.0 alike,
# optimizer/distrib_optimizer.py DistributedOptimizer.sharded_state_dict): 'fully_reshardable'
# (sharded_param_state_fully_reshardable) gathers each parameter's fp32 master copy and Adam
# moments into model space, keyed like the model's own sharded tensors, so the state loads at any
# TP x PP x DP, as the plain optimizer's does. The alternatives do not: 'dp_reshardable' stores
# the DP buckets and reshards across DP only; the default 'fully_sharded_model_space' is
# deprecated and its flattened ranges are refused by the torch_dist writer. mem_efficient: the
# gather goes over the gloo DP group to DP rank 0 in CPU memory (get_parameter_state_dp_zero with
# use_gloo_comm), not through GPU memory the rollout engine may hold. Loading reads the whole
# parameter-shaped state on every rank and keeps its own slice
# (load_parameter_state_from_fully_reshardable).
DIST_OPT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                     "distrib_optim_fully_reshardable_mem_efficient": True}


def optimizer_sharded_state_dict(actor, is_loading: bool = False):
    """The actor's optimizer state as Megatron sharded tensors (a loading template with
    ``is_loading``), in model space for either optimizer. Collective."""
    model_sd = actor.policy_module.sharded_state_dict()
    if not actor.uses_distributed_optimizer:
        return actor.optimizer.sharded_state_dict(model_sd, is_loading=is_loading)
    for opt in _optimizers(actor):
        _index_params_in_group_order(opt)
    with _buckets_in_buffer_coordinates(_optimizers(actor)):
        return actor.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=DIST_OPT_METADATA)


def _optimizers(actor) -> list:
    return getattr(actor.optimizer, "chained_optimizers", [actor.optimizer])


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
    save_sharded_state(optimizer_sharded_state_dict(actor), ckpt_dir / "optimizer")


def load_actor(actor, ckpt_dir: Path) -> None:
    """Collective: the inverse of :func:`save_actor`, at this process's layout, whichever
    layout wrote the checkpoint (the model, the reference and the optimizer all reshard)."""
    from megatron.core import dist_checkpointing

    load_model_state(actor.policy_module, ckpt_dir / "model")
    load_model_state(actor.reference, ckpt_dir / "reference")
    if (ckpt_dir / "optimizer" / FRESH_OPTIMIZER).is_file():
        actor.reinitialise_optimizer()
        return
    torch_adam = _torch_adam_steps_per_parameter()
    distributed = actor.uses_distributed_optimizer
    if distributed and torch_adam:
        for opt in _optimizers(actor):
            _allocate_adam_state(opt)
    state = dist_checkpointing.load(optimizer_sharded_state_dict(actor, is_loading=True), str(ckpt_dir / "optimizer"))
    with torch.no_grad():  # fp32 main params may be views of model params
        with _steps_passed_through(_optimizers(actor)) if distributed and torch_adam else contextlib.nullcontext():
            actor.optimizer.load_state_dict(state)
    if torch_adam:
        for opt in _optimizers(actor):
            _own_step_per_parameter(opt.optimizer)


def _index_params_in_group_order(opt) -> None:
    """megatron-core 0.16.1 (0.17.0 the same), optimizer/distrib_optimizer.py:
    _build_model_and_main_param_groups gives the inner optimizer each group's fp32 parameter
    shards first and the fp32 copies of its bf16/fp16 shards after them, while
    _build_optimizer_group_ranges numbers a group's parameters in buffer order
    (model_param_group_index_map). In a group holding both kinds (the local layer spec keeps its
    norms in fp32 in a bf16 model) _get/_set_main_param_and_optimizer_states then read and write
    another parameter's state: a norm's Adam moments were saved as a bias's. Renumber each group
    in the order the inner optimizer holds it (training itself does not use the map)."""
    for group, (fp32, half) in enumerate(zip(opt.model_fp32_groups, opt.model_float16_groups)):
        for order, param in enumerate([*fp32, *half]):
            opt.model_param_group_index_map[param] = (group, order)


@contextlib.contextmanager
def _overridden(optimizers, method: str, make):
    """Each optimizer's ``method`` replaced by ``make(optimizer)`` for the block (an instance
    attribute over the class's method, deleted after)."""
    for opt in optimizers:
        setattr(opt, method, make(opt))
    try:
        yield
    finally:
        for opt in optimizers:
            delattr(opt, method)


def _buckets_in_buffer_coordinates(optimizers):
    """megatron-core 0.16.1 (0.17.0 the same), optimizer/distrib_optimizer.py: for
    'fully_reshardable', get_parameter_state_dp_zero returns each buffer's state as its buckets'
    unpadded parts back to back, but sharded_param_state_fully_reshardable cuts parameters out of
    it at their places in the padded buffer (param_index_map). With more than one bucket (a tied
    embedding has a bucket of its own under the distributed optimizer) every parameter after the
    first bucket's end padding is read shifted, and the last ones run past the end ("param range
    exceeds unpadded buffer ... padded with zeros", its issue #504): the saved embedding and its
    moments would be wrong. Here the state is laid out at the buffer's own coordinates (each
    bucket at its start, zeros in the padding), so every cut is right."""
    def laid_out(opt):
        original = opt.get_parameter_state_dp_zero

        def get_state(*args, **kwargs):
            state = original(*args, **kwargs)
            if state is None:
                return None
            for gbuf_idx, buffer in enumerate(opt.buffers):
                for world in state[gbuf_idx].values():
                    for key in ("param", "exp_avg", "exp_avg_sq"):
                        packed, offset = world[key], 0
                        world[key] = torch.zeros(buffer.numel, dtype=packed.dtype, device=packed.device)
                        for (start, _), bucket in zip(buffer.bucket_indices, buffer.buckets):
                            world[key][start:start + bucket.numel_unpadded] = packed[offset:offset + bucket.numel_unpadded]
                            offset += bucket.numel_unpadded
            return state

        return get_state

    return _overridden(optimizers, "get_parameter_state_dp_zero", laid_out)


# Without Transformer Engine or Apex (the CPU path), Megatron-Core's optimizers wrap torch's Adam,
# which keeps the step count per parameter ("step" in each parameter's state); TE's and Apex's
# FusedAdam keep it per parameter group. Three places in megatron-core 0.16.1 (0.17.0 the same)
# optimizer/distrib_optimizer.py assume the latter when the distributed optimizer loads a
# checkpoint; the three helpers below make up for each, and are used only on that path.
def _torch_adam_steps_per_parameter() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return not distrib_optimizer.HAVE_APEX_OR_TE


def _allocate_adam_state(opt) -> None:
    """DistributedOptimizer.state_dict (called to build the loading template) asserts one step
    count among the parameter states, which a fresh torch Adam does not have yet: allocate them
    with Megatron's own _init_optimizer_states_with_dummy_values (one step on zero gradients),
    at learning rate 0 so that the parameters do not move (AdamW's decay is then x1, the update
    x0). Everything it allocates is overwritten by the load."""
    if len(opt.optimizer.state):
        return
    groups = opt.optimizer.param_groups
    rates = [g["lr"] for g in groups]
    for g in groups:
        g["lr"] = 0.0
    try:
        opt._init_optimizer_states_with_dummy_values()
    finally:
        for g, lr in zip(groups, rates):
            g["lr"] = lr


def _steps_passed_through(optimizers):
    """load_parameter_state_from_fully_reshardable hands _set_main_param_and_optimizer_states
    the parameter's tensors without "step" (it is restored from the param groups), which then
    copies every state key of torch Adam, "step" included: KeyError. Pass each parameter's
    already restored step along."""
    def passing_step(opt):
        original = opt._set_main_param_and_optimizer_states

        def set_states(model_param, tensors):
            group, order = opt.model_param_group_index_map[model_param]
            main_param = opt.optimizer.param_groups[group]["params"][order]
            return original(model_param, {"step": opt.optimizer.state[main_param]["step"], **tensors})

        return set_states

    return _overridden(optimizers, "_set_main_param_and_optimizer_states", passing_step)


def _own_step_per_parameter(torch_optimizer) -> None:
    """DistributedOptimizer.load_state_dict gives every parameter state the same step tensor,
    and torch's Optimizer.load_state_dict keeps a "step" value as it is (no copy): torch Adam then
    adds 1 to that one tensor once per parameter, so from the second step on every bias
    correction is wrong and the run drifts from an uninterrupted one, silently. Each parameter
    gets its own copy."""
    for state in torch_optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


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
