"""A user's own reward domain and rollout engine, registered from tests (module-level, so that
spawned RewardPool workers can import the verifier by name)."""

from __future__ import annotations

from megatron_prorl.rewards import RewardResult


def verify_toy(answer: str, ground_truth, cfg) -> RewardResult:
    """Reward 1 when the answer spells the ground truth backwards."""
    return RewardResult(float(answer.strip() == str(ground_truth)[::-1]))
