"""Math: the \\boxed{} answer compared with the reference by Math-Verify; binary.

Math-Verify (parse + verify) handles fractions, decimals, percentages, intervals, sets,
symbolic equivalence and ``\\text{}`` units. The light normalisation here covers what it does
not: a trailing full stop, bare unit words after a number ("12 dollars") and scientific
``1e3`` notation. Math-Verify times itself out with SIGALRM, which only works in a process's
main thread: elsewhere (a user calling :func:`score` from a thread) it runs without its own
timeout and the caller's timeout is the only guard; the RewardPool always calls it from a
worker's main thread.

An answer in several boxes, in the response (``x = \\boxed{3}, y = \\boxed{5}``) or in the
reference (``\\boxed{1} papers and \\boxed{2} bins``), is read as Math-Verify 0.9.0 reads it:
the final run of boxes (:func:`~megatron_prorl.domains.text.boxed_answers`) joined with commas
into one set, so every part must match, in any order (math_verify/parser.py ``extract_latex``,
``boxed="last"``; latex2sympy2_extended 1.11.0 ``extract_boxed_content``). As there, a part
holding a thousands separator ("1,000") splits at it.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence, Union

from megatron_prorl.domains import Domain, PrepareSource
from megatron_prorl.domains.result import GroundTruthError, RewardResult, format_failure, show
from megatron_prorl.domains.text import boxed_answers

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


def parse_answer(answers: Union[str, Sequence[str]]) -> list:
    """Math-Verify's parse of an answer: one boxed content, or the parts of a multi-part one,
    each normalised, then boxed side by side so that Math-Verify joins them into one set."""
    from math_verify import parse

    parts = (answers,) if isinstance(answers, str) else answers
    return parse(", ".join("\\boxed{" + normalize(a) + "}" for a in parts),
                 extraction_config=_extraction_config(), parsing_timeout=_timeout())


def answers_match(gold: list, answers: Sequence[str]) -> tuple[bool, list]:
    """Whether ``answers`` (the boxed contents of a response) equal the parsed reference ``gold``."""
    from math_verify import verify

    parsed = parse_answer(answers)
    return bool(parsed) and bool(verify(gold, parsed, timeout_seconds=_timeout())), parsed


def reference_answers(text: str) -> tuple[str, ...]:
    """A reference's answer parts: its boxed answer when it has one (datasets that store the
    reference solution, or several boxes for a multi-part answer), else the whole text."""
    return tuple(boxed_answers(text)) or (text,)


def parse_reference(ground_truth: Any) -> list:
    """A math reference, parsed."""
    if not isinstance(ground_truth, (str, int, float)) or isinstance(ground_truth, bool):
        raise GroundTruthError(f"math ground_truth must be a string, got {type(ground_truth).__name__}: "
                               f"{ground_truth!r:.200}")
    gold = parse_gold(reference_answers(str(ground_truth)))
    if not gold:
        raise GroundTruthError(f"math ground_truth {ground_truth!r:.200} is not parsable by Math-Verify")
    return gold


@lru_cache(maxsize=4096)  # the n responses of a prompt share its reference
def parse_gold(answers: tuple[str, ...]) -> list:
    """Math-Verify's parse of a reference's answer parts (cached)."""
    return parse_answer(answers)


def verify_math(answer: str, ground_truth: Any, cfg: RewardsConfig) -> RewardResult:
    boxed = boxed_answers(answer)
    if not boxed:
        return format_failure("no \\boxed{} answer")
    if not any(boxed):
        return format_failure("empty \\boxed{}")
    shown = ", ".join(boxed)
    ok, parsed = answers_match(parse_reference(ground_truth), boxed)
    if all(isinstance(p, str) for p in parsed):  # Math-Verify kept only the raw string
        return format_failure("unparsable answer", answer=shown)
    return RewardResult(1.0 if ok else 0.0, details={"answer": shown})


def check_ground_truth(gt: Any) -> None:
    if not isinstance(gt, str) or not gt.strip():
        raise ValueError(f"ground_truth must be a non-empty answer string, got {show(gt)}")


def warm(cfg) -> None:
    parse_answer("1")  # Math-Verify's grammars load on first use (seconds)


# ProRL's instruction, verbatim (the embedded tiny model was trained on it too).
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

DOMAIN = Domain(
    "math", verify=verify_math, instruction=INSTRUCTION, check_ground_truth=check_ground_truth, warm=warm,
    prepare=PrepareSource("hf:agentica-org/DeepScaleR-Preview-Dataset", "deepscaler"),
    example="What is the sum of the real roots of $x^2 - 5x + 6 = 0$?", title="Math", order=0, headline="pass@1", answers=True)
