"""Procedural problem sources, named ``NAME:ARG[?key=value&...]`` in a data source's path.

- ``arithmetic:add``: "What is {a}+{b}?" with a, b uniform in 10..99 (``?low=..&high=..``
  change the range), domain math, ground truth the sum as a string. The embedded tiny default
  trains on exactly this text: do not change it. ``?terms=3`` draws three terms
  ("What is {a}+{b}+{c}?"): a harder variant of the same task.
- ``arithmetic:sub``: "What is {a}-{b}?", the same options, the terms sorted largest first (a
  two-term difference is never negative): a task the tiny default never trained on.
- ``reasoning_gym:TASK``: any Reasoning Gym task, generated offline by
  ``reasoning_gym.create_dataset(TASK, seed=seed, size=size, **config)``; the query string is
  the task's config (values parsed as JSON when they parse, e.g.
  ``reasoning_gym:graph_color?min_num_vertices=20&max_num_vertices=20``). Domain logic; ground
  truth ``{"task": TASK, "entry": entry}``, the whole entry (question, answer, metadata), which
  is what the task's own scorer reads.

The same path, seed and size give the same rows on any machine.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl

from megatron_prorl.data.schema import Row
from megatron_prorl.errors import DataError
from megatron_prorl.registry import Registry


@dataclass(frozen=True)
class Generator:
    domain: str  # of every row it makes
    make: Callable[[str, int, int, dict], list[Row]]  # (arg, size, seed, config) -> rows


def is_generator(path: str) -> bool:
    return ":" in path and path.partition(":")[0] in GENERATORS


def domain_of(path: str) -> str:
    """The domain of the rows the generator source ``path`` makes."""
    return GENERATORS.get(path.partition(":")[0]).domain


def generate(path: str, size: int, seed: int) -> list[Row]:
    """``size`` rows of the generator source ``path`` (see the module docstring)."""
    name, _, rest = path.partition(":")
    arg, _, query = rest.partition("?")
    if name not in GENERATORS:
        raise DataError(f"{path!r}: unknown generator {name!r} (known: {', '.join(GENERATORS.names())})")
    if size < 1:
        raise DataError(f"{path!r}: size must be >= 1, got {size}")
    config = {key: _value(value) for key, value in parse_qsl(query, keep_blank_values=True)}
    return GENERATORS.get(name).make(arg, size, seed, config)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


_OPERATORS = {"add": "+", "sub": "-"}


def _arithmetic(op: str, size: int, seed: int, config: dict) -> list[Row]:
    if op not in _OPERATORS:
        raise DataError(f"arithmetic:{op}: unknown operation (known: {', '.join(_OPERATORS)})")
    low, high, terms = config.pop("low", 10), config.pop("high", 99), config.pop("terms", 2)
    if config or not (all(isinstance(v, int) for v in (low, high, terms)) and low <= high and terms >= 2):
        raise DataError(f"arithmetic:{op} takes integer 'low' <= 'high' and 'terms' >= 2 only, "
                        f"got {dict(config, low=low, high=high, terms=terms)}")
    rng = random.Random(seed)
    rows = []
    for i in range(size):
        # Drawn in order, so two terms give exactly the rows (and RNG stream) add always gave.
        xs = [rng.randint(low, high) for _ in range(terms)]
        if op == "sub":
            xs.sort(reverse=True)
        answer = sum(xs) if op == "add" else xs[0] - sum(xs[1:])
        rows.append(Row(prompt=f"What is {_OPERATORS[op].join(map(str, xs))}?", domain="math",
                        ground_truth=str(answer), source=f"arithmetic:{op}", id=f"arithmetic:{op}:{seed}:{i}"))
    return rows


def _reasoning_gym(task: str, size: int, seed: int, config: dict) -> list[Row]:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise DataError(f"reasoning_gym:{task}: unknown task (reasoning_gym has {len(DATASETS)} tasks, "
                         f"e.g. {', '.join(sorted(DATASETS)[:5])}, ...)")
    try:
        dataset = reasoning_gym.create_dataset(task, seed=seed, size=size, **config)
    except (TypeError, ValueError, AssertionError) as exc:
        raise DataError(f"reasoning_gym:{task}: bad config {config}: {exc}") from None
    rows = []
    for i in range(size):
        entry = dataset[i]
        rows.append(Row(prompt=entry["question"], domain="logic", ground_truth={"task": task, "entry": entry},
                        source=f"reasoning_gym:{task}", id=f"reasoning_gym:{task}:{seed}:{i}"))
    return rows


GENERATORS: Registry[Generator] = Registry("problem generator", {
    "arithmetic": Generator("math", _arithmetic),
    "reasoning_gym": Generator("logic", _reasoning_gym),
})
