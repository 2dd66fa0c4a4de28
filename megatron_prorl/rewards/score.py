"""Scoring one response: the rules common to every domain, then the domain's verifier.

A verifier (:attr:`megatron_prorl.domains.Domain.verify`) is ``fn(answer, ground_truth, cfg) ->
RewardResult`` where ``answer`` is the response's text after its reasoning (after
``</think>``). The rules common to every domain live here, once: a response cut at the length
limit scores 0 and is flagged ``truncated``; an unclosed ``<think>`` has no answer; the
reasoning never counts as the answer.
"""

from __future__ import annotations

from typing import Any, Optional

from megatron_prorl import domains
from megatron_prorl.config import RewardsConfig
from megatron_prorl.domains import Domain, Verifier, register_domain
from megatron_prorl.domains.result import RewardResult, format_failure
from megatron_prorl.domains.text import answer_part

_DEFAULT_CFG = RewardsConfig()


def register_verifier(domain: str, fn: Verifier, *, replace: bool = False) -> Verifier:
    """Add a domain that has only a verifier (``replace=True`` to replace one): shorthand for
    ``register_domain(Domain(domain, verify=fn))``. A module-level (picklable) function also
    reaches RewardPool workers started afterwards."""
    register_domain(Domain(domain, verify=fn), replace=replace)
    return fn


def score_detailed(domain: str, response: str, ground_truth: Any, *, finished: bool = True,
                   cfg: Optional[RewardsConfig] = None) -> RewardResult:
    """Score one response. ``finished``: it ended with EOS (False: cut at the length limit).

    Format failures give reward 0 and a reason; a malformed ground truth or an unknown domain
    raises (a data bug must not silently become zero rewards)."""
    verifier = domains.get(domain).verify
    if not finished:
        return RewardResult(0.0, "truncated", truncated=True)
    if not isinstance(response, str):
        raise TypeError(f"response must be str, got {type(response).__name__}")
    answer = answer_part(response)
    if answer is None:
        return format_failure("unclosed <think>")
    return verifier(answer, ground_truth, cfg or _DEFAULT_CFG)


def score(domain: str, response: str, ground_truth: Any, *, finished: bool = True,
          cfg: Optional[RewardsConfig] = None) -> float:
    """The reward of one response (see :func:`score_detailed`)."""
    return score_detailed(domain, response, ground_truth, finished=finished, cfg=cfg).reward
