"""Experience: scored groups (:mod:`megatron_prorl.rollout.generate`) -> the training batch and
the step's reward statistics."""

from __future__ import annotations

from typing import Sequence

import torch

from megatron_prorl.runtime import device
from megatron_prorl.algo import get_advantage
from megatron_prorl.train.batch import TrainBatch, from_sequences
from megatron_prorl.rollout.generate import Group


def rewards_tensor(groups: Sequence[Group]) -> torch.Tensor:
    return torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)


def to_train_batch(groups: Sequence[Group], advantage: str, pad_id: int, adv_eps: float = 1e-6,
                   scale_by_std: bool = True) -> TrainBatch:
    """Flatten groups into a TrainBatch: one row per response, GRPO advantages per group; built
    on the host, handed over on the compute device."""
    n = len(groups[0].samples)
    advantages = get_advantage(advantage)(rewards_tensor(groups), n, eps=adv_eps, scale_by_std=scale_by_std)
    samples = [s for g in groups for s in g.samples]
    prompts = [g.prompt_ids for g in groups for _ in g.samples]
    return device.to_current(from_sequences(prompts, [s.token_ids for s in samples], advantages.float(),
                                            pad_id=pad_id, engine_logprobs=[s.logprobs for s in samples]))


def group_stats(groups: Sequence[Group], domains: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(sum, count) per metric, so data-parallel replicas can be reduced exactly."""
    stats: dict[str, tuple[float, float]] = {}

    def add(name, value, count=1.0):
        s, c = stats.get(name, (0.0, 0.0))
        stats[name] = (s + value, c + count)

    for d in domains:  # every replica reports every name, even with no sample of a domain
        add(f"reward/{d}", 0.0, 0.0)
        add(f"accuracy/{d}", 0.0, 0.0)
    for name in ("reward/mean", "response_length/mean", "response_length/truncated_frac"):
        add(name, 0.0, 0.0)
    for g in groups:
        for s, r, reward in zip(g.samples, g.results, g.rewards):
            add("reward/mean", reward)
            add(f"reward/{g.domain}", reward)
            add(f"accuracy/{g.domain}", float(r.reward >= 1.0))
            add("response_length/mean", len(s.token_ids))
            add("response_length/truncated_frac", float(s.finish_reason == "length"))
    return stats


def max_response_length(groups: Sequence[Group]) -> int:
    return max((len(s.token_ids) for g in groups for s in g.samples), default=0)
