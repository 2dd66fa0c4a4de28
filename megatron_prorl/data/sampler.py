"""A weighted mixture of row pools, deterministic given a seed and resumable exactly.

Each draw picks a pool with probability proportional to its weight, then takes that pool's
next row in the current epoch's shuffled order: within a pool, rows are drawn without
replacement, each epoch in a fresh order. Every random choice is a pure function of
``(seed, draw number)`` or ``(seed, pool, epoch)`` (string-seeded ``random.Random``: no hash
salting, the same on every process and machine), so the state is a handful of counters:
``state_dict()`` is plain JSON, and a sampler loaded from it continues with exactly the rows
the original would have drawn. Weights may change between stages (:meth:`set_weights`); they
are part of the state.

The state also holds each pool's size and digest (XXH3-128 of its rows in order, as ``prorl``
records: :func:`rows_digest`), so a resume onto other data is refused, naming the source: rows
added, removed, edited or reordered since the checkpoint would make the resumed run draw other
prompts than the run it continues. Refusing (not warning) keeps "resume repeats the
uninterrupted run" true; the cost is one pass over the rows per process, once (see
bench/bench_data_digest.py: well under a second per 100k rows of the paper's mix).
"""

from __future__ import annotations

import bisect
import json
import random
from itertools import accumulate
from typing import Iterator, Mapping, Optional, Sequence

import xxhash

from megatron_prorl.data.formats import to_record
from megatron_prorl.data.schema import Row
from megatron_prorl.errors import DataError


def rows_digest(rows: Sequence[Row]) -> str:
    """XXH3-128 of ``rows`` in order: each row's ``prorl`` record as canonical JSON (sorted keys,
    structured ground truths through jsoncodec), so equal rows digest alike however they were read."""
    digest = xxhash.xxh3_128()
    for row in rows:
        digest.update(json.dumps(to_record(row, json_strings=False), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


class MixedSampler:
    """Draws rows from named pools (e.g. ``Data.pools()``) mixed by ``weights`` (default equal).
    ``origins`` names where each pool's rows come from (a file), for the messages."""

    def __init__(self, pools: Mapping[str, Sequence[Row]], weights: Optional[Mapping[str, float]] = None,
                 seed: int = 0, origins: Optional[Mapping[str, str]] = None):
        if not pools:
            raise DataError("MixedSampler needs at least one pool")
        empty = [name for name, rows in pools.items() if not rows]
        if empty:
            raise DataError(f"empty pools: {empty}")
        self._pools = {name: pools[name] for name in sorted(pools)}  # order-independent choices
        self._names = list(self._pools)
        self.seed = seed
        self._draws = 0
        self._cursors = {name: [0, 0] for name in self._pools}  # name -> [epoch, position]
        self._orders: dict[str, tuple[int, list[int]]] = {}  # name -> (epoch, permutation)
        self._origins = dict(origins or {})
        self._digests: dict[str, str] = {}  # computed once, when first needed (the pools do not change)
        self.set_weights(weights or {name: 1.0 for name in self._pools})

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self._names, self._weights))

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """New mixture weights (relative; pools not named get 0)."""
        unknown = set(weights) - set(self._pools)
        if unknown:
            raise DataError(f"weights for unknown pools {sorted(unknown)} (pools: {list(self._pools)})")
        values = [float(weights.get(name, 0.0)) for name in self._pools]
        if any(w < 0 for w in values) or sum(values) <= 0:
            raise DataError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
        self._weights = values
        self._cumulative = list(accumulate(values))

    def next_row(self) -> Row:
        u = random.Random(f"{self.seed}:pick:{self._draws}").random() * self._cumulative[-1]
        index = min(bisect.bisect_right(self._cumulative, u), len(self._names) - 1)
        while self._weights[index] == 0:  # rounding put u at the end, past zero-weight pools
            index -= 1
        name = self._names[index]
        self._draws += 1
        return self._pools[name][self._take(name)]

    def next_batch(self, k: int) -> list[Row]:
        return [self.next_row() for _ in range(k)]

    def __iter__(self) -> Iterator[Row]:
        while True:
            yield self.next_row()

    def _take(self, name: str) -> int:
        cursor = self._cursors[name]
        size = len(self._pools[name])
        if cursor[1] == size:
            cursor[0], cursor[1] = cursor[0] + 1, 0
        epoch, position = cursor
        if self._orders.get(name, (None,))[0] != epoch:
            order = list(range(size))
            random.Random(f"{self.seed}:{name}:{epoch}").shuffle(order)
            self._orders[name] = (epoch, order)
        cursor[1] += 1
        return self._orders[name][1][position]

    def epochs(self) -> dict[str, float]:
        """Passes made over each pool so far (fractional)."""
        return {n: e + p / len(self._pools[n]) for n, (e, p) in self._cursors.items()}

    def digest(self, name: str) -> str:
        if name not in self._digests:
            self._digests[name] = rows_digest(self._pools[name])
        return self._digests[name]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "draws": self._draws, "weights": self.weights,
                "pools": {n: {"size": len(rows), "digest": self.digest(n), "epoch": self._cursors[n][0],
                              "position": self._cursors[n][1]} for n, rows in self._pools.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        saved = state["pools"]
        if set(saved) != set(self._pools):
            raise DataError(f"sampler state is for pools {sorted(saved)}, this sampler has {list(self._pools)}")
        changed = []
        for name, rows in self._pools.items():
            where = self._origins.get(name, name)
            if saved[name]["size"] != len(rows):
                changed.append(f"{where}: {saved[name]['size']} rows then, {len(rows)} now")
            elif saved[name].get("digest", self.digest(name)) != self.digest(name):  # older states: sizes only
                changed.append(f"{where}: the same {len(rows)} rows, in another order or with other content")
        if changed:
            raise DataError(f"data changed since the checkpoint: {'; '.join(changed)}; resuming would not draw the "
                            "prompts the run it continues would have drawn (restore the data as it was, or start "
                            "afresh in another trainer.output_dir)")
        self.seed, self._draws = int(state["seed"]), int(state["draws"])
        self._cursors = {n: [int(saved[n]["epoch"]), int(saved[n]["position"])] for n in self._pools}
        self._orders = {}
        self.set_weights(state["weights"])


def domain_mix_weights(pools: Mapping[str, Sequence[Row]], base: Mapping[str, float],
                       mix: Mapping[str, float]) -> dict[str, float]:
    """Pool weights for a stage's per-domain mix (``trainer.stages[].data_mix``).

    A mixed domain's total weight becomes ``mix[domain]``, shared among its pools in proportion
    to their ``base`` weights (equally if those are all 0); domains not in ``mix`` keep their
    base weights. Each pool must hold a single domain (give a mixed file a ``domain`` filter).
    """
    domain_of = {}
    for name, rows in pools.items():
        domains = {r.domain for r in rows}
        if len(domains) != 1:
            raise DataError(f"pool {name!r} holds domains {sorted(domains)}; a per-domain mix needs one "
                             "domain per pool (set the source's domain)")
        domain_of[name] = domains.pop()
    missing = set(mix) - set(domain_of.values())
    if missing:
        raise DataError(f"data_mix names domains with no data: {sorted(missing)}")
    weights = {name: float(base.get(name, 0.0)) for name in pools}
    for domain, total in mix.items():
        names = [n for n in pools if domain_of[n] == domain]
        base_sum = sum(weights[n] for n in names)
        for n in names:
            weights[n] = total * (weights[n] / base_sum if base_sum > 0 else 1 / len(names))
    return weights
