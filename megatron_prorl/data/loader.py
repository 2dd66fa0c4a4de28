"""Loading configured data sources into rows, with every dropped row accounted for.

:func:`load_source` reads one source (a file or a hub dataset ``hf:NAME?...``, see
:func:`readers.read_hub`, in any format of :data:`FORMATS`; or a generator path) and converts,
checks and counts its rows: a *bad* row (missing field, wrong type, unknown domain, unparsable
tests) is skipped with a :class:`BadRowWarning` naming the file and row (the
first ten per file, then a total); a *dropped* row (well formed but unusable: no checkable
answer, another domain than the source keeps) is only counted, by reason. A source left with no
rows is an error naming it.

:func:`load_data` loads the train and val sources of a ``DataConfig``, drops (or, with
``overlong_prompts: truncate``, counts) prompts longer than ``max_prompt_length``, and drops
train rows whose problem also appears in val (by normalised text, :func:`heldout.problem_key`),
so validation stays held out (val is kept whole: a small procedural space such as
arithmetic:add is covered by a large train set, and an evaluation set is the one to keep).
Generators get a seed derived from ``data.seed``, the split and their path: train and val
draw different problems, and the same config draws the same ones on every machine.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from megatron_prorl import builtin, domains
from megatron_prorl.config import DataConfig, DataSourceConfig, choice
from megatron_prorl.data import generators, heldout, prompts
from megatron_prorl.data.formats import FORMATS, Skip, to_record
from megatron_prorl.data.readers import HUB_PREFIX, read_hub, read_records
from megatron_prorl.data.schema import BadRow, Row, check_row
from megatron_prorl.errors import DataError

WARNINGS_PER_FILE = 10


class BadRowWarning(UserWarning):
    """A malformed row was skipped (the message names the file, the row and the problem)."""


@dataclass
class Source:
    """One loaded data source: its rows and what was left out of it, and why."""
    name: str
    path: str
    weight: float
    rows: list[Row]
    bad: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    truncated: int = 0  # rows kept whose prompt encode_prompt will cut

    def drop_held_out(self, keys: set[str], reason: str) -> None:
        """Remove the rows whose problem is in ``keys`` (:mod:`.heldout`), counted under ``reason``."""
        self.rows, dropped = heldout.split_held_out(self.rows, keys)
        if dropped:
            self.dropped[reason] += dropped

    def summary(self) -> str:
        parts = [f"{len(self.rows)} rows"]
        if self.bad:
            parts.append(f"{self.bad} bad")
        parts += [f"{n} dropped: {reason}" for reason, n in sorted(self.dropped.items())]
        if self.truncated:
            parts.append(f"{self.truncated} to be truncated")
        return f"{self.name}: " + ", ".join(parts)


def load_source(src: DataSourceConfig, seed: int = 0, name: Optional[str] = None) -> Source:
    """Rows of one source; ``seed`` seeds generator sources (files ignore it)."""
    name = name or source_label(src)
    if not src.path:
        raise DataError(f"data source {name!r}: empty path")
    if generators.is_generator(src.path):
        domain = generators.domain_of(src.path)
        if src.domain and src.domain != domain:
            raise DataError(f"data source {src.path!r} makes {domain} rows, but its domain is {src.domain!r}")
        return Source(name, src.path, src.weight, generators.generate(src.path, src.size, seed))
    try:
        fmt = FORMATS.get(src.format)
    except KeyError as exc:
        raise DataError(f"data source {src.path}: {exc}") from None
    if fmt.domain and src.domain and fmt.domain != src.domain:
        raise DataError(f"data source {src.path}: format {fmt.name!r} gives {fmt.domain} rows, "
                         f"but the source's domain is {src.domain!r}")
    source = Source(name, src.path, src.weight, [])
    if src.path.startswith(HUB_PREFIX):
        where, records = src.path, read_hub(src.path, src.split)
        stem = src.path.partition("?")[0].rpartition("/")[2]
    else:
        path = builtin.resolve(src.path)
        where, records, stem = path, read_records(path, src.split), path.name
    for location, record in records:
        try:
            if isinstance(record, str):
                raise BadRow(record)
            row = fmt.convert(record)
            check_row(row)
        except BadRow as exc:
            source.bad += 1
            if source.bad <= WARNINGS_PER_FILE:
                warnings.warn(f"{where}: {location}: {exc}; row skipped", BadRowWarning, stacklevel=2)
            continue
        except Skip as reason:
            source.dropped[str(reason)] += 1
            continue
        if src.domain and row.domain != src.domain:
            source.dropped[f"domain {row.domain}, source keeps {src.domain}"] += 1
            continue
        row.source = row.source or fmt.name
        row.id = row.id or f"{stem}#{location.split()[-1]}"
        source.rows.append(row)
    if source.bad > WARNINGS_PER_FILE:
        warnings.warn(f"{where}: {source.bad} bad rows skipped in all ({source.bad - WARNINGS_PER_FILE} "
                      "not shown)", BadRowWarning, stacklevel=2)
    if not source.rows:
        raise DataError(f"{where}: no usable rows ({source.summary()})")
    return source


def source_label(src: DataSourceConfig) -> str:
    """A readable name: the generator path, or the file name; with the domain it keeps, if any."""
    generated = generators.is_generator(src.path)
    label = src.path if generated or src.path.startswith(HUB_PREFIX) else Path(src.path).name
    return f"{label}[{src.domain}]" if src.domain and not generated else label


def derive_seed(seed: int, split: str, path: str) -> int:
    """A stable 31-bit seed for one generator source of one split (no Python hash salting)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{path}".encode()).digest()[:4], "big") >> 1


@dataclass
class Data:
    train: list[Source]
    val: list[Source]

    def pools(self) -> dict[str, list[Row]]:
        """Train rows by source name (the sampler's pools)."""
        return {s.name: s.rows for s in self.train}

    def weights(self) -> dict[str, float]:
        return {s.name: s.weight for s in self.train}

    def summary(self) -> str:
        return "\n".join(f"{split} {s.summary()}" for split, sources in (("train", self.train), ("val", self.val))
                         for s in sources)


def check_config(d: DataConfig) -> None:
    """Every source names a known format and a registered task domain."""
    for split in ("train", "val"):
        for i, src in enumerate(getattr(d, split)):
            key = f"data.{split}[{i}]"
            choice(f"{key}.domain", src.domain, ("", *domains.names()))
            choice(f"{key}.format", src.format, FORMATS.names())


def check_files(d: DataConfig) -> None:
    """Every local file the sources name exists; a missing one is named with the key that
    points at it (before a run starts, so it leaves nothing behind)."""
    for split in ("train", "val"):
        for i, src in enumerate(getattr(d, split)):
            if generators.is_generator(src.path) or src.path.startswith(HUB_PREFIX):
                continue
            path = builtin.resolve(src.path)
            if not path.exists():
                shown = "" if str(path) == src.path else f" ({path})"
                raise DataError(f"data.{split}[{i}].path={src.path!r}: no such file or directory{shown}")


def load_data(cfg: DataConfig, tokenizer=None, max_prompt_length: Optional[int] = None) -> Data:
    """All train and val sources of ``cfg``; prompt lengths are checked when a tokenizer is given."""
    check_files(cfg)
    data = Data(train=load_split(cfg, "train"), val=load_split(cfg, "val"))
    if not data.train:
        raise DataError("data.train has no sources")
    if tokenizer is not None and max_prompt_length is not None:
        for source in data.train + data.val:
            _apply_length_limit(source, tokenizer, max_prompt_length, cfg.overlong_prompts)
    held_out = heldout.held_out_keys(r for s in data.val for r in s.rows)
    for source in data.train:
        source.drop_held_out(held_out, "also in val")
    for source in data.train + data.val:
        if not source.rows:
            raise DataError(f"data source {source.path}: no rows left ({source.summary()})")
    return data


def load_split(cfg: DataConfig, split: str) -> list[Source]:
    """The sources of ``cfg.train`` or ``cfg.val``, named uniquely, generators seeded per split."""
    sources, names = [], Counter()
    for src in getattr(cfg, split):
        label = source_label(src)
        names[label] += 1
        name = label if names[label] == 1 else f"{label}#{names[label]}"
        sources.append(load_source(src, seed=derive_seed(cfg.seed, split, src.path), name=name))
    return sources


def _apply_length_limit(source: Source, tokenizer, max_prompt_length: int, policy: str) -> None:
    lengths = prompts.prompt_lengths(tokenizer, source.rows)
    over = sum(n > max_prompt_length for n in lengths)
    if policy == "truncate":
        source.truncated = over
    elif over:
        source.rows = [r for r, n in zip(source.rows, lengths) if n <= max_prompt_length]
        source.dropped[f"prompt over {max_prompt_length} tokens"] += over


def save_rows(rows: Sequence[Row], path: str | Path) -> None:
    """Write rows in the ``prorl`` format: ``.jsonl``, ``.parquet``, or (no suffix) a saved
    ``datasets`` directory. Ground truths survive the round trip exactly (see jsoncodec)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(to_record(row, json_strings=False), ensure_ascii=False) + "\n")
        return
    if path.suffix not in (".parquet", ""):
        raise DataError(f"{path}: save_rows writes .jsonl, .parquet or a directory (no suffix)")
    import datasets

    dataset = datasets.Dataset.from_list([to_record(r, json_strings=True) for r in rows])
    if path.suffix == ".parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
