"""Groups of scored responses: prompts -> the engine's samples -> decoded texts -> rewards.

A *group* is one prompt with its n sampled responses and their rewards (GRPO's unit). Scoring
runs in the reward pool's processes while the engine generates the next chunk of prompts, so
verification overlaps generation. Training (``train/experience.py``) and evaluation
(``eval/run.py``) both sample through here; what each does with a group is its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Sequence

import torch

from megatron_prorl.domains.result import RewardItem, RewardResult
from megatron_prorl.rollout.base import RolloutEngine, Sample, SamplingParams
from megatron_prorl.runtime import device


class Problem(Protocol):
    """What sampling and scoring read of a problem: a data row (:class:`megatron_prorl.data.Row`,
    in a layer beside this one, so named by its shape)."""

    domain: str
    ground_truth: Any


@dataclass
class Group:
    row: Problem
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


def generate_groups(engine: RolloutEngine, pool, tokenizer, rows: Sequence[Problem], prompt_ids: Sequence[list[int]],
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
