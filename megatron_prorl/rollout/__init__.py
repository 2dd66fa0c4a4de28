"""Rollout engines: generation with exact sampling log-probs, and the engine side of weight sync.

Engines are chosen by name (``rollout.engine``, ``prorl eval --engine``; "auto" resolved by
:func:`resolve_engine`) through :func:`build_engine` / :func:`build_engine_from_config`; the
concrete engine modules are imported only when selected.
"""

from megatron_prorl.rollout.base import (
    ENGINES,
    FINISH_REASONS,
    Bucket,
    RolloutEngine,
    Sample,
    SamplingParams,
    SyncStats,
    build_engine,
    build_engine_from_config,
    engine_choices,
    register_engine,
    resolve_engine,
)

__all__ = [
    "ENGINES",
    "FINISH_REASONS",
    "Bucket",
    "RolloutEngine",
    "Sample",
    "SamplingParams",
    "SyncStats",
    "build_engine",
    "build_engine_from_config",
    "engine_choices",
    "register_engine",
    "resolve_engine",
]
