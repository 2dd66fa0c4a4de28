"""Scoring responses: one at a time (:func:`score`), or in batches across the machine's cores,
asynchronously, with a timeout per item (:class:`RewardPool`).

The verifiers themselves belong to the task domains (:mod:`megatron_prorl.domains`); model-written
code runs in the sandbox of :mod:`megatron_prorl.sandbox`.
"""

from megatron_prorl.domains.result import CodeExecutionDisabled, GroundTruthError, RewardItem, RewardResult
from megatron_prorl.rewards.pool import RewardPool
from megatron_prorl.rewards.score import register_verifier, score, score_detailed

__all__ = [
    "CodeExecutionDisabled",
    "GroundTruthError",
    "RewardItem",
    "RewardPool",
    "RewardResult",
    "register_verifier",
    "score",
    "score_detailed",
]
