"""A run's whole config checked before any rank starts: the config's own field checks, then each
part's ``check_config`` for its section, composed here (config.py knows nothing of the parts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from megatron_prorl import algo
from megatron_prorl.config import ProRLConfig, load_config
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


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ProRLConfig:
    """The config of a run: loaded (:func:`megatron_prorl.config.load_config`) and validated."""
    cfg = load_config(path, overrides)
    validate(cfg)
    return cfg
