"""Verifiable rewards for the five ProRL domains.

``score(domain, response, ground_truth)`` scores one response; :class:`RewardPool` scores
batches asynchronously in worker processes with a timeout per item. Model-written code runs in
the sandbox of :mod:`megatron_prorl.sandbox.sandbox`.
"""

from megatron_prorl.rewards.pool import RewardPool
from megatron_prorl.rewards.registry import VERIFIERS, register_verifier, score, score_detailed
from megatron_prorl.rewards.result import CodeExecutionDisabled, GroundTruthError, RewardItem, RewardResult
from megatron_prorl.sandbox.sandbox import Sandbox, SandboxUnavailable

__all__ = [
    "CodeExecutionDisabled",
    "GroundTruthError",
    "RewardItem",
    "RewardPool",
    "RewardResult",
    "Sandbox",
    "SandboxUnavailable",
    "VERIFIERS",
    "register_verifier",
    "score",
    "score_detailed",
]
