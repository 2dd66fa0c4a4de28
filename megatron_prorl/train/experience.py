"""Experience: prompts -> sampled groups -> rewards -> the training batch.

A *group* is one prompt with its n sampled responses and their rewards (GRPO's unit). Scoring
runs in the reward pool's processes while the engine generates the next chunk of prompts, so
verification overlaps generation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from megatron_prorl.runtime import device
from megatron_prorl.algo import get_advantage
from megatron_prorl.train.batch import TrainBatch, from_sequences
from megatron_prorl.data.schema import Row
from megatron_prorl.rewards import RewardItem, RewardResult
from megatron_prorl.rollout import RolloutEngine, Sample, SamplingParams


@dataclass
class Group:
    row: Row
    prompt_ids: list[int]
    samples: list[Sample]
    results: list[RewardResult]
    rewards: list[float]  # after any length penalty

    @property
    def domain(self) -> str:
        return self.row.domain


@dataclass
class RoundTimes:
    generation: float = 0.0
    reward_wait: float = 0.0  # time spent waiting on rewards after generation finished
    extra: dict = field(default_factory=dict)


def generate_groups(engine: RolloutEngine, pool, tokenizer, rows: Sequence[Row], prompt_ids: Sequence[list[int]],
                    params: SamplingParams, no_eos_penalty: float = 0.0, chunks: int = 2) -> tuple[list[Group], RoundTimes]:
    """Sample ``params.n`` responses for each row and score them.

    Prompts go to the engine in ``chunks`` pieces; each piece's responses are submitted to the
    reward pool at once, so scoring overlaps the next piece's generation. Responses cut at the
    length limit score 0 (the verifiers see ``finished=False``); ``no_eos_penalty`` is then
    subtracted from their reward (the paper's runs 4-5).
    """
    times = RoundTimes()
    pending = []
    bounds = torch.arange(len(rows)).tensor_split(max(1, min(chunks, len(rows))))
    for idx in bounds:
        idx = idx.tolist()
        if not idx:
            continue
        t0 = time.perf_counter()
        samples = device.to_host(engine.generate([prompt_ids[i] for i in idx],
                                                 replace(params, seed=params.seed + idx[0])))
        times.generation += time.perf_counter() - t0
        texts = response_texts(tokenizer, samples)
        items = [RewardItem(rows[idx[s.prompt_index]].domain, text, rows[idx[s.prompt_index]].ground_truth,
                            finished=s.finish_reason != "length") for s, text in zip(samples, texts)]
        pending.append((idx, samples, pool.submit(items)))
    t0 = time.perf_counter()
    groups = []
    for idx, samples, future in pending:
        results = future.result()
        for j, i in enumerate(idx):
            group_samples = samples[j * params.n:(j + 1) * params.n]
            group_results = results[j * params.n:(j + 1) * params.n]
            rewards = [r.reward - (no_eos_penalty if s.finish_reason == "length" else 0.0)
                       for s, r in zip(group_samples, group_results)]
            groups.append(Group(rows[i], list(prompt_ids[i]), group_samples, group_results, rewards))
    times.reward_wait = time.perf_counter() - t0
    return groups, times


def response_texts(tokenizer, samples: Sequence[Sample]) -> list[str]:
    """The text of each response as the verifiers see it. Special tokens are kept (a tokenizer
    may mark <think> as one: dropping it would let the reasoning count as the answer); only the
    terminating EOS/stop token is not text."""
    return tokenizer.batch_decode([s.token_ids[:-1] if s.finish_reason != "length" else s.token_ids
                                   for s in samples], skip_special_tokens=False)


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
