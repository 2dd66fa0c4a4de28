"""Logic puzzles: Reasoning Gym's own scorer for the task, on the text inside <answer> tags.

The reward is continuous (Reasoning Gym gives partial credit for some tasks). The ground
truth is ``{"task": name, "entry": the generator's entry dict}``; the scorer is built once per
task and process (building a dataset object can be slow).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from megatron_prorl.domains import Domain, PrepareSource
from megatron_prorl.domains.result import GroundTruthError, RewardResult, format_failure, ground_truth_json
from megatron_prorl.domains.text import answer_tag

if TYPE_CHECKING:
    from megatron_prorl.config import RewardsConfig


@lru_cache(maxsize=None)
def scorer(task: str) -> Callable[[str, dict], float]:
    import reasoning_gym

    try:
        return reasoning_gym.get_score_answer_fn(task)
    except ValueError as exc:
        raise GroundTruthError(f"logic ground_truth: unknown Reasoning Gym task {task!r}") from exc


def verify_logic(answer: str, ground_truth: Any, cfg: RewardsConfig) -> RewardResult:
    ground_truth = ground_truth_json(ground_truth, "logic")
    if not (isinstance(ground_truth, dict) and isinstance(ground_truth.get("task"), str)
            and isinstance(ground_truth.get("entry"), dict)):
        raise GroundTruthError(f"logic ground_truth must be {{'task': str, 'entry': dict}}, got {ground_truth!r:.200}")
    score_fn = scorer(ground_truth["task"])
    text = answer_tag(answer)
    if text is None:
        return format_failure("no <answer> tag")
    try:
        reward = float(score_fn(text, ground_truth["entry"]))
    except Exception as exc:  # some scorers parse the answer and raise on garbage: a format failure
        return format_failure(f"answer rejected by the {ground_truth['task']} scorer: {type(exc).__name__}",
                              answer=text[:200])
    if not math.isfinite(reward):
        reward = 0.0
    return RewardResult(min(max(reward, 0.0), 1.0), details={"answer": text[:200]})


def check_ground_truth(gt: Any) -> None:
    if not isinstance(gt, dict) or not isinstance(gt.get("task"), str) or not isinstance(gt.get("entry"), dict):
        raise ValueError("logic ground_truth must be {'task': str, 'entry': dict}")
    entry = gt["entry"]
    if not isinstance(entry.get("question"), str) or not isinstance(entry.get("metadata"), dict):
        raise ValueError("logic entry needs a 'question' string and a 'metadata' dict")
    from reasoning_gym.factory import DATASETS  # late: a 2 s import, needed only for logic rows

    if gt["task"] not in DATASETS:
        raise ValueError(f"unknown reasoning_gym task {gt['task']!r}")


def warm(cfg) -> None:
    import reasoning_gym  # noqa: F401  (imports every generator: seconds)


# Generated offline from Reasoning Gym (the mix: megatron_prorl/data/reasoning_gym_mix.py); the
# headline is the mean of its continuous rewards (the paper's).
DOMAIN = Domain(
    "logic", verify=verify_logic, check_ground_truth=check_ground_truth, warm=warm,
    instruction="Think step by step, then give your final answer inside <answer></answer> tags.",
    prepare=PrepareSource(generate="megatron_prorl.data.reasoning_gym_mix:generate"),
    example="Sort these words in ascending (ASCII/Unicode) order: pear, apple, fig\nAnswer with a comma-separated list.",
    title="Logic puzzles", order=4, headline="mean reward", structured_ground_truth=True)
