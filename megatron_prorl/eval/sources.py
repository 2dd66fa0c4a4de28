"""Evaluation data sources named on the command line.

A SOURCE is anything a config's data source path accepts (a local file or saved ``datasets``
directory, ``builtin:...``, ``reasoning_gym:TASK?config``, ``arithmetic:add``), optionally
prefixed by a format name, ``FORMAT=PATH`` (``math=aime24.jsonl``, ``gpqa=gpqa_diamond.csv``);
without one a file is read in the ``prorl`` format. Each source keeps its problems in file
order; generator sources draw ``size`` problems from a seed derived from the evaluation seed
and the path (so they differ from the training and validation draws of a config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from megatron_prorl.config import DataSourceConfig
from megatron_prorl.data import FORMATS, Row, load_source
from megatron_prorl.data.generators import is_generator
from megatron_prorl.data.loader import derive_seed, source_label
from megatron_prorl.errors import DataError


@dataclass
class EvalSource:
    label: str  # unique among the sources of one evaluation
    spec: str  # as given
    rows: list[Row]


def source_config(spec: str, size: int) -> DataSourceConfig:
    """The DataSourceConfig a ``[FORMAT=]PATH`` spec names."""
    head, sep, rest = spec.partition("=")
    if sep and head in FORMATS:
        return DataSourceConfig(path=rest, format=head, size=size)
    if sep and re.fullmatch(r"[A-Za-z_][\w-]*", head) and not Path(spec).exists():
        raise DataError(f"data source {spec!r}: unknown format {head!r} (known: {', '.join(FORMATS)})")
    return DataSourceConfig(path=spec, size=size)


def load_sources(specs: Sequence[str], size: int = 100, seed: int = 0, limit: Optional[int] = None) -> list[EvalSource]:
    """Rows of each source (the first ``limit`` problems of each, when given)."""
    if not specs:
        raise ValueError("no data source given")
    sources: list[EvalSource] = []
    seen: dict[str, int] = {}
    for spec in specs:
        cfg = source_config(spec, size)
        if not cfg.path:
            raise ValueError(f"data source {spec!r}: empty path")
        if not is_generator(cfg.path) and ":" in cfg.path.split("/")[0] and not cfg.path.startswith("builtin:"):
            name = cfg.path.partition(":")[0]
            raise ValueError(f"data source {spec!r}: unknown generator {name!r} (known: reasoning_gym:TASK, "
                             f"arithmetic:add; a format prefix is FORMAT=PATH with FORMAT one of {', '.join(FORMATS)})")
        rows = load_source(cfg, seed=derive_seed(seed, "eval", cfg.path)).rows
        label = source_label(cfg)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        sources.append(EvalSource(label, spec, rows[:limit] if limit else rows))
    return sources
