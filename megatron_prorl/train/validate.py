"""A run's whole config checked before any rank starts: the config's own field checks, then each
part's ``check_config`` for its section, composed here (config.py knows nothing of the parts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from megatron_prorl import algo
from megatron_prorl.config import ConfigError, ProRLConfig, load_config
from megatron_prorl.data import loader
from megatron_prorl.models import builder
from megatron_prorl.rollout import base as rollout
from megatron_prorl.runtime import accelerator, distributed


def validate(cfg: ProRLConfig, hf_config: Optional[dict] = None, world_size: Optional[int] = None) -> None:
    """Every semantic check of the sections. Model-shape checks run when ``hf_config``
    (config.json) is given, data-parallel checks when ``world_size`` is. The stage schedule is
    :func:`~megatron_prorl.train.stages.resolve_stages`'s to check (a config without stages is
    valid until it is run)."""
    builder.check_config(cfg.model, cfg.parallel, hf_config)
    accelerator.check_config(cfg.model, cfg.parallel)
    algo.check_config(cfg.algo)
    rollout.check_config(cfg.rollout)
    loader.check_config(cfg.data)
    if world_size is not None:
        distributed.check_world_size(cfg.parallel, cfg.batch, world_size)


# What a checkpoint's model must share with the run's to resume: everything its tensors' shapes
# follow from (the vocabulary's padding is redone for the new TP: its rows are not data).
_MODEL_SHAPE = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size")


def resume_candidate(cfg: ProRLConfig) -> Optional[Path]:
    """The trainer checkpoint a run of ``cfg`` would resume (the run's ``latest``, else its
    newest step directory, else checkpoint.load when it is a trainer checkpoint), as far as the
    files tell before any rank starts; None if there is none or it cannot be read (the trainer
    then reports what is wrong with it)."""
    from checkpoint_convert.checkpoint import CHECKPOINTS_DIR, LATEST, STEP_PREFIX, resolve_checkpoint
    from checkpoint_convert.errors import ConversionError

    root = Path(cfg.trainer.output_dir) / CHECKPOINTS_DIR
    found: list[Path] = []
    if (root / LATEST).is_file():
        found.append(root / (root / LATEST).read_text().strip())
    found += sorted(root.glob(f"{STEP_PREFIX}*"), reverse=True) if root.is_dir() else []
    if cfg.checkpoint.load:
        try:
            found.append(resolve_checkpoint(cfg.checkpoint.load)[0])
        except ConversionError:
            pass  # the trainer says what is wrong with it
    return next((p for p in found if (p / "trainer_state.json").is_file()), None)


def check_resume_layout(cfg: ProRLConfig, hf_config: dict, world_size: int) -> None:
    """Resuming a checkpoint at this run's layout: the model must be the checkpoint's, the layout
    one the model can take, and the optimizer the kind that wrote the state. Refusals name the
    checkpoint's layout and the asked one."""
    import json

    from checkpoint_convert.errors import ConversionError
    from megatron_prorl.train.actor import uses_distributed_optimizer
    from megatron_prorl.train.checkpoint import FRESH_OPTIMIZER, Layout, checkpoint_layout

    path = resume_candidate(cfg)
    if path is None:
        return
    try:
        saved = checkpoint_layout(path)
        ckpt_model = json.loads((path / "hf" / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, ConversionError):
        return  # damaged or partial: the trainer reports it, and falls back to another checkpoint
    p = cfg.parallel
    mp = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    asked = Layout(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, max(1, world_size // mp),
                   "distributed" if uses_distributed_optimizer(p) else "plain")
    where = f"resuming {path} (written at {saved}) at {asked}"
    differs = [f"{k}={ckpt_model.get(k)} there, {hf_config.get(k)} in model.hf_dir" for k in _MODEL_SHAPE
               if ckpt_model.get(k) != hf_config.get(k)]
    if differs:
        raise ConfigError(f"{where}: the checkpoint holds another model ({'; '.join(differs)})")
    try:
        builder.check_config(cfg.model, p, hf_config)
        distributed.check_world_size(p, cfg.batch, world_size)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if saved.optimizer != asked.optimizer and not (path / "optimizer" / FRESH_OPTIMIZER).is_file():
        raise ConfigError(f"{where}: its optimizer state is the {saved.optimizer} optimizer's, this run uses the "
                          f"{asked.optimizer} one; set parallel.use_distributed_optimizer="
                          f"{str(saved.optimizer == 'distributed').lower()}")


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ProRLConfig:
    """The config of a run: loaded (:func:`megatron_prorl.config.load_config`) and validated."""
    cfg = load_config(path, overrides)
    validate(cfg)
    return cfg
