"""The training batch of one data-parallel rank: token sequences and per-token tensors.

Per-token tensors are in the "next-token" frame [N, S-1]: position t scores token t+1, so
``loss_mask[i, t] = 1`` when token t+1 of sequence i is a response token.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [N, S] long, right-padded
    loss_mask: torch.Tensor  # [N, S-1] float
    advantages: torch.Tensor  # [N] float
    old_logprobs: Optional[torch.Tensor] = None  # [N, S-1], the policy's before the first update
    ref_logprobs: Optional[torch.Tensor] = None  # [N, S-1]
    engine_logprobs: Optional[torch.Tensor] = None  # [N, S-1], from the rollout engine

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> "TrainBatch":
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if getattr(self, f.name) is not None})

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

    def micro_batches(self, size: int) -> list[dict]:
        """Dicts for the pipeline schedule, each exactly ``size`` rows (padding rows masked)."""
        batch = self.pad_rows(size)
        n, s = batch.input_ids.shape
        position_ids = torch.arange(s, device=batch.input_ids.device).unsqueeze(0).expand(size, s)
        out = []
        for start in range(0, n, size):
            mb = {f.name: getattr(batch, f.name)[start:start + size] for f in fields(batch)
                  if getattr(batch, f.name) is not None}
            mb["position_ids"] = position_ids
            out.append(mb)
        return out


def from_sequences(prompts: list[list[int]], responses: list[list[int]], advantages: Sequence[float],
                   pad_id: int = 0, engine_logprobs: Optional[list[Sequence[float]]] = None,
                   pad_to_multiple: int = 8) -> TrainBatch:
    """Build a batch from token lists: prompt + response, right-padded to a common length."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    s = -(-max(lengths) // pad_to_multiple) * pad_to_multiple
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
                      advantages=torch.as_tensor(advantages, dtype=torch.float32), engine_logprobs=eng)
