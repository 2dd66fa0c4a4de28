"""Math: the last \\boxed{} answer compared with the reference by Math-Verify; binary.

Math-Verify (parse + verify) handles fractions, decimals, percentages, intervals, sets,
symbolic equivalence and ``\\text{}`` units. The light normalisation here covers what it does
not: a trailing full stop, bare unit words after a number ("12 dollars") and scientific
``1e3`` notation. Math-Verify times itself out with SIGALRM, which only works in a process's
main thread: elsewhere (a user calling :func:`score` from a thread) it runs without its own
timeout and the caller's timeout is the only guard; the RewardPool always calls it from a
worker's main thread.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from megatron_prorl.rewards.result import GroundTruthError, RewardResult, format_failure
from megatron_prorl.rewards.text import last_boxed

if TYPE_CHECKING:
    from megatron_prorl.config import RewardsConfig

MATH_VERIFY_TIMEOUT_S = 5

_NUMBER_THEN_WORDS = re.compile(r"^([-+]?\$?\d[\d,]*(?:\.\d+)?)\s*([A-Za-z]+(?:\s+[A-Za-z]+)?)$")
_SCIENTIFIC = re.compile(r"^([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)$")


def normalize(answer: str) -> str:
    answer = answer.strip().strip("$").strip()
    answer = re.sub(r"(?<!\\)[.;,]+$", "", answer).strip()
    answer = _SCIENTIFIC.sub(r"\1\\times 10^{\2}", answer)
    return _NUMBER_THEN_WORDS.sub(r"\1\\text{ \2}", answer)


@lru_cache(maxsize=1)
def _extraction_config():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def parse_answer(answer: str) -> list:
    from math_verify import parse

    return parse("\\boxed{" + normalize(answer) + "}", extraction_config=_extraction_config(),
                 parsing_timeout=_timeout())


def answers_match(gold: list, answer: str) -> tuple[bool, list]:
    """Whether ``answer`` (a boxed content) equals the parsed reference ``gold``."""
    from math_verify import verify

    parsed = parse_answer(answer)
    return bool(parsed) and bool(verify(gold, parsed, timeout_seconds=_timeout())), parsed


def parse_reference(ground_truth: Any) -> list:
    """A math reference, parsed (a stored solution's last ``\\boxed{...}`` if it has one)."""
    if not isinstance(ground_truth, (str, int, float)) or isinstance(ground_truth, bool):
        raise GroundTruthError(f"math ground_truth must be a string, got {type(ground_truth).__name__}: "
                               f"{ground_truth!r:.200}")
    text = str(ground_truth)
    boxed = last_boxed(text)  # some datasets store the reference solution's "\boxed{...}"
    gold = parse_gold(boxed if boxed is not None else text)
    if not gold:
        raise GroundTruthError(f"math ground_truth {ground_truth!r:.200} is not parsable by Math-Verify")
    return gold


@lru_cache(maxsize=4096)  # the n responses of a prompt share its reference
def parse_gold(text: str) -> list:
    """Math-Verify's parse of a reference answer (cached)."""
    return parse_answer(text)


def verify_math(answer: str, ground_truth: Any, cfg: RewardsConfig) -> RewardResult:
    boxed = last_boxed(answer)
    if boxed is None:
        return format_failure("no \\boxed{} answer")
    if not boxed.strip():
        return format_failure("empty \\boxed{}")
    ok, parsed = answers_match(parse_reference(ground_truth), boxed)
    if all(isinstance(p, str) for p in parsed):  # Math-Verify kept only the raw string
        return format_failure("unparsable answer", answer=boxed)
    return RewardResult(1.0 if ok else 0.0, details={"answer": boxed})
