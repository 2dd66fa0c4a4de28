"""The training batch of one data-parallel rank, and how it is cut into micro-batches.

Per-token tensors are in the "next-token" frame [N, S-1]: position t scores token t+1, so
``loss_mask[i, t] = 1`` when token t+1 of sequence i is a response token.

Three ways to form micro-batches (``batch`` config section):

- fixed: ``micro_batch_size`` rows each, every row padded to the batch's longest sequence;
- token budget (``max_tokens_per_micro_batch``): rows sorted longest first and grouped so that
  rows x (longest row, rounded up to 8) stays within the budget; each micro-batch is as wide
  as its own longest row;
- packed (``pack_sequences``): sequences bin-packed first-fit-decreasing into rows of at most
  the budget, one row per micro-batch, no padding but the row's rounding to 8 tokens. The
  model sees the row in the THD layout: ``cu_seqlens`` bounds each sequence (positions restart,
  attention stays inside it, see models/attention.py); the loss gathers each sequence's tokens
  back into the row layout ("unpack_index"), so the objective sees what it sees unpacked.

Every micro-batch dict carries the batch rows it holds ("rows", -1 for padding rows), and the
per-token tensors the loss reads in the row layout ``[rows, w]``. :func:`scatter_rows` puts
per-micro-batch outputs back in batch order.

Data-parallel balance: with a token budget the work of a step, not its row count, is what each
rank should share evenly. A sequence of L tokens costs about ``L * (P + layers * d * L)``
multiply-adds forward (P: parameters a token passes through, d: attention width; the L^2 term
is causal attention's QK^T and PV): :func:`sequence_work`. :func:`balanced_partition` deals
items to k parts with Karmarkar-Karp's largest differencing method, as verl's
``verl/utils/seqlen_balancing.py`` (``get_seqlen_balanced_partitions``; its newer
``calculate_workload`` weighs ``24576 L + L^2``, the same form for a 7B model) and AReaL's
``MicroBatchSpec(packing_algorithm="kk")`` do.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch

from megatron_prorl.config import BatchConfig, ConfigError

ROW_MULTIPLE = 8  # every row the model sees is a multiple of this many tokens long
PER_ROW = ("advantages", "lengths", "mini_batch")  # the fields with one value per row


def round_up(x: int, multiple: int = ROW_MULTIPLE) -> int:
    return -(-x // multiple) * multiple


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [N, S] long, right-padded
    loss_mask: torch.Tensor  # [N, S-1] float
    advantages: torch.Tensor  # [N] float
    old_logprobs: Optional[torch.Tensor] = None  # [N, S-1], the policy's before the first update
    ref_logprobs: Optional[torch.Tensor] = None  # [N, S-1]
    engine_logprobs: Optional[torch.Tensor] = None  # [N, S-1], from the rollout engine
    lengths: Optional[torch.Tensor] = None  # [N] long: tokens before each row's padding (None: S)
    mini_batch: Optional[torch.Tensor] = None  # [N] long: the update each row belongs to (None: in order)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def token_lengths(self) -> list[int]:
        """Each row's prompt + response tokens."""
        if self.lengths is None:
            return [self.input_ids.shape[1]] * len(self)
        return self.lengths.tolist()

    def select(self, index: torch.Tensor | Sequence[int]) -> "TrainBatch":
        index = torch.as_tensor(index, dtype=torch.long, device=self.input_ids.device)
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if getattr(self, f.name) is not None})

    def mini_batches(self, count: int) -> list[torch.Tensor]:
        """Row indices of each of ``count`` optimizer updates: as ``PolicyActor.balance`` dealt them, else
        ``count`` consecutive slices."""
        if self.mini_batch is None:
            return list(torch.arange(len(self), device=self.input_ids.device).tensor_split(count))
        return [(self.mini_batch == k).nonzero().squeeze(-1) for k in range(count)]

    def pad_rows(self, multiple: int) -> "TrainBatch":
        """Append all-masked rows so the row count is a multiple of ``multiple``."""
        extra = -len(self) % multiple
        if not extra:
            return self
        padded = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is not None:
                padded[f.name] = torch.cat([t, t.new_zeros((extra,) + tuple(t.shape[1:]))])
        return TrainBatch(**padded)

    def _row_fields(self, rows: torch.Tensor, width: int) -> dict:
        """The per-row and per-token tensors of ``rows``, per-token ones cut to ``width``."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None or f.name in ("input_ids", "lengths", "mini_batch"):
                continue
            out[f.name] = t[rows] if f.name in PER_ROW else t[rows, :width]
        return out

    def micro_batches(self, size: int) -> list[dict]:
        """Fixed micro-batches: dicts for the pipeline schedule, each exactly ``size`` rows
        (padding rows masked) as wide as the batch."""
        n = len(self)
        batch = self.pad_rows(size)
        dev = batch.input_ids.device
        s = batch.input_ids.shape[1]
        position_ids = torch.arange(s, device=dev).unsqueeze(0).expand(size, s)
        index = torch.arange(len(batch), device=dev)
        out = []
        for start in range(0, len(batch), size):
            rows = index[start:start + size]
            mb = batch._row_fields(rows, s - 1)
            mb.update(input_ids=batch.input_ids[rows], position_ids=position_ids,
                      rows=torch.where(rows < n, rows, -1))
            out.append(mb)
        return out

    def budget_micro_batches(self, max_tokens: int, pack: bool) -> list[dict]:
        """Micro-batches of at most ``max_tokens`` tokens (see the module docstring)."""
        lengths = self.token_lengths()
        dev = self.input_ids.device
        out = []
        for group in plan_micro_batches(lengths, max_tokens, pack):
            rows = torch.tensor(group, device=dev)
            longest = max(lengths[i] for i in group)
            if not pack:
                s = round_up(longest)
                mb = self._row_fields(rows, s - 1)
                mb.update(input_ids=self.input_ids[rows, :s], rows=rows,
                          position_ids=torch.arange(s, device=dev).unsqueeze(0).expand(len(group), s))
                out.append(mb)
                continue
            mb = self._row_fields(rows, longest - 1)
            mb.update(_pack(self.input_ids, group, [lengths[i] for i in group], longest))
            mb["rows"] = rows
            out.append(mb)
        return out


def flatten(batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Each field as one 1-D tensor of its rows' real entries (a row's L tokens, L - 1 next-token
    positions, or its one value), row after row: what data-parallel ranks exchange."""
    lengths = batch.token_lengths()
    s = batch.input_ids.shape[1]
    out = {}
    for f in fields(batch):
        t = getattr(batch, f.name)
        if t is None:
            continue
        if f.name in PER_ROW:
            out[f.name] = t
        else:
            out[f.name] = torch.cat([t[i, :n - (s - t.shape[1])] for i, n in enumerate(lengths)])
    out["lengths"] = torch.tensor(lengths, device=batch.input_ids.device)
    return out


def unflatten(flat: dict[str, torch.Tensor], rows: Sequence[int]) -> TrainBatch:
    """The batch of ``rows`` (indices into the rows :func:`flatten` laid out), right-padded with
    zeros to a multiple of 8 tokens (what padding holds never matters: it comes after a row's
    tokens, so causal attention never sees it, and the loss mask hides it)."""
    lengths = flat["lengths"].tolist()
    starts = {"tokens": [0], "positions": [0]}
    for n in lengths:
        starts["tokens"].append(starts["tokens"][-1] + n)
        starts["positions"].append(starts["positions"][-1] + n - 1)
    s = round_up(max(lengths[i] for i in rows))
    index = torch.as_tensor(list(rows), dtype=torch.long, device=flat["lengths"].device)
    out = {}
    for name, t in flat.items():
        if name in PER_ROW:
            out[name] = t[index]
            continue
        unit, width = ("tokens", s) if name == "input_ids" else ("positions", s - 1)
        filled = t.new_zeros((len(rows), width))
        for j, i in enumerate(rows):
            a, b = starts[unit][i], starts[unit][i + 1]
            filled[j, :b - a] = t[a:b]
        out[name] = filled
    return TrainBatch(**out)


def _pack(input_ids: torch.Tensor, rows: list[int], lengths: list[int], longest: int) -> dict:
    """One THD row of the sequences ``rows`` (of ``lengths`` tokens), padded to a multiple of 8:
    input_ids / position_ids [1, T], cu_seqlens (the padding is a sequence of its own), max_seqlen,
    and unpack_index [n, longest - 1]: where each sequence's next-token positions sit in the
    row's next-token frame (0 past a sequence's end, which its loss mask hides)."""
    dev = input_ids.device
    total = sum(lengths)
    segments = lengths + ([round_up(total) - total] if total % ROW_MULTIPLE else [])
    ids = [input_ids[r, :n] for r, n in zip(rows, lengths)] + [input_ids.new_zeros(segments[-1])] * (
        len(segments) - len(lengths))
    starts = torch.tensor([0] + segments, device=dev).cumsum(0)
    offsets = torch.arange(max(longest - 1, 0), device=dev)
    within = offsets.unsqueeze(0) < (torch.tensor(lengths, device=dev) - 1).unsqueeze(1)
    return {"input_ids": torch.cat(ids).unsqueeze(0),
            "position_ids": torch.cat([torch.arange(n, device=dev) for n in segments]).unsqueeze(0),
            "cu_seqlens": starts.to(torch.int32), "max_seqlen": max(segments),
            "unpack_index": torch.where(within, starts[:len(lengths)].unsqueeze(1) + offsets, 0)}


def unpack(values: torch.Tensor, mb: dict) -> torch.Tensor:
    """Per-token values in a micro-batch's model layout ``[b, s-1]`` -> its row layout: the packed
    row's values gathered per sequence; unpacked micro-batches are already in it."""
    if "unpack_index" not in mb:
        return values
    return values[0][mb["unpack_index"]]


def scatter_rows(micro_batches: list[dict], values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-micro-batch ``[rows, w]`` values -> ``like``-shaped ``[N, S-1]`` in batch order (0 past
    each micro-batch's width)."""
    out = torch.zeros_like(like, dtype=values[0].dtype) if values else torch.zeros_like(like)
    for mb, v in zip(micro_batches, values):
        keep = mb["rows"] >= 0
        out[mb["rows"][keep], :v.shape[1]] = v[keep]
    return out


# ------------------------------------------------------------------------------ planning

def plan_micro_batches(lengths: Sequence[int], max_tokens: int, pack: bool) -> list[list[int]]:
    """Row indices of each micro-batch within ``max_tokens`` tokens, longest rows first.

    Packed: first-fit decreasing on the lengths (a row's cost is its tokens, rounded up to 8 in
    total). Padded: consecutive runs of the sorted rows, each as many as fit at the run's
    longest row rounded up to 8."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if order and round_up(lengths[order[0]]) > max_tokens:
        raise ValueError(f"a sequence of {lengths[order[0]]} tokens does not fit a micro-batch of "
                         f"{max_tokens} tokens (batch.max_tokens_per_micro_batch)")
    groups: list[list[int]] = []
    if pack:
        room: list[int] = []
        for i in order:
            fit = next((g for g, r in enumerate(room) if r >= lengths[i]), None)
            if fit is None:
                groups.append([i])
                room.append(max_tokens - lengths[i])
            else:
                groups[fit].append(i)
                room[fit] -= lengths[i]
        return groups
    for i in order:
        if groups and (len(groups[-1]) + 1) * round_up(lengths[groups[-1][0]]) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def padding_fraction(micro_batches: list[dict], real_tokens: int) -> float:
    """Share of the tokens the model computes over ``micro_batches`` that are padding."""
    computed = sum(mb["input_ids"].numel() for mb in micro_batches)
    return 1.0 - real_tokens / computed if computed else 0.0


def sequence_work(lengths: Sequence[int], params_per_token: int, attention_width: int) -> list[int]:
    """Forward multiply-adds of each sequence: ``L * (params_per_token + attention_width * L)``
    (``attention_width``: layers x query heads x head dim; causal QK^T and PV are L^2 / 2 each)."""
    return [n * (params_per_token + attention_width * n) for n in lengths]


def balanced_partition(work: Sequence[int], k: int) -> list[list[int]]:
    """Indices of ``work`` in ``k`` parts of near-equal sums (Karmarkar-Karp largest differencing:
    repeatedly merge the two partial k-way partitions whose spread is largest, pairing the
    heaviest part of one with the lightest of the other). Parts are listed heaviest first, each
    in index order; deterministic."""
    if len(work) < k:
        raise ValueError(f"{len(work)} items cannot fill {k} parts")
    # A state: its k parts as (sum, indices), heaviest first; the heap pops the widest spread.
    heap = []
    for i, w in enumerate(work):
        parts = [(w, [i])] + [(0, []) for _ in range(k - 1)]
        heapq.heappush(heap, (-w, i, parts))
    while len(heap) > 1:
        _, key_a, a = heapq.heappop(heap)
        _, key_b, b = heapq.heappop(heap)
        merged = sorted(((sa + sb, ia + ib) for (sa, ia), (sb, ib) in zip(a, reversed(b))),
                        key=lambda p: (-p[0], p[1]))
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), min(key_a, key_b), merged))
    return [sorted(ids) for _, ids in heap[0][2]]


def check_budget(b: BatchConfig, longest: int, where: str) -> None:
    """Every token budget must hold the longest sequence a stage can produce (prompt + response)."""
    for key in ("max_tokens_per_micro_batch", "max_tokens_per_logprob_micro_batch"):
        budget = getattr(b, key)
        if budget is not None and budget < round_up(longest):
            raise ConfigError(
                f"batch.{key}={budget} is smaller than the longest sequence {where} can produce: "
                f"{longest} tokens (rollout.max_prompt_length + max_response_length"
                f"{', rounded up to a multiple of 8' if longest % 8 else ''}); raise it to at least "
                f"{round_up(longest)}")


def from_sequences(prompts: list[list[int]], responses: list[list[int]], advantages: Sequence[float],
                   pad_id: int = 0, engine_logprobs: Optional[list[Sequence[float]]] = None,
                   pad_to_multiple: int = ROW_MULTIPLE) -> TrainBatch:
    """Build a batch from token lists: prompt + response, right-padded to a common length."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    s = round_up(max(lengths), pad_to_multiple)
    n = len(prompts)
    input_ids = torch.full((n, s), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(n, s - 1)
    eng = torch.zeros(n, s - 1) if engine_logprobs is not None else None
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, :len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        # Token len(p)+j is scored at position len(p)+j-1.
        loss_mask[i, len(p) - 1:len(p) - 1 + len(r)] = 1.0
        if eng is not None:
            eng[i, len(p) - 1:len(p) - 1 + len(r)] = torch.as_tensor(engine_logprobs[i], dtype=torch.float32)
    return TrainBatch(input_ids=input_ids, loss_mask=loss_mask,
                      advantages=torch.as_tensor(advantages, dtype=torch.float32), engine_logprobs=eng,
                      lengths=torch.tensor(lengths, dtype=torch.long))
