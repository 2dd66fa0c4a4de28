"""What a verifier returns, and the errors that are the caller's fault rather than the response's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RewardResult:
    """One scored response.

    ``reason`` is empty when the response was scored normally (right or wrong) and says why
    otherwise: a format failure ("no \\boxed{} answer"), "truncated", "timeout", "error: ...".
    ``details`` holds what the verifier saw (the extracted answer, per-test or per-constraint
    outcomes) for logging.
    """

    reward: float
    reason: str = ""
    truncated: bool = False
    details: dict = field(default_factory=dict)


@dataclass
class RewardItem:
    """One response to score. ``finished``: the response ended with EOS (not cut at the limit)."""

    domain: str
    response: str
    ground_truth: Any
    finished: bool = True


class GroundTruthError(ValueError):
    """A ground truth is malformed for its domain (a data bug, not a bad response)."""


class CodeExecutionDisabled(RuntimeError):
    """rewards.allow_code_execution is false and a code response was submitted."""


def format_failure(reason: str, **details: Any) -> RewardResult:
    return RewardResult(0.0, reason, details=details)


def ground_truth_json(value: Any, domain: str) -> Any:
    """A structured ground truth given as a JSON string, decoded (anything else as it is)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise GroundTruthError(f"{domain} ground_truth is a string but not JSON: {value!r:.200}") from exc


def show(value: Any) -> str:
    """A value as error messages quote it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
