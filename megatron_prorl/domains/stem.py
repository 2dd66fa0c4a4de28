"""STEM: multiple choice (a letter) or a short numeric/symbolic answer; binary.

The reference decides the kind: a single letter (``"C"``, ``"(C)"``) is a multiple-choice key,
anything else is compared like math (Math-Verify), with a normalised string comparison for
short textual answers Math-Verify cannot parse. The response's answer is its boxed answer, read
as for math (several boxes make one multi-part answer); for multiple choice, its last box, or
"answer is (C)" / "Answer: C" when nothing is boxed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from megatron_prorl.domains import Domain, PrepareSource
from megatron_prorl.domains.math import INSTRUCTION, answers_match, check_ground_truth, parse_gold, reference_answers, warm
from megatron_prorl.domains.result import GroundTruthError, RewardResult, format_failure
from megatron_prorl.domains.text import boxed_answers

if TYPE_CHECKING:
    from megatron_prorl.config import RewardsConfig

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_LETTER = re.compile(r"^\(?([A-Za-z])\)?(?:$|[.):\s])")
# "answer is (C)", "Answer: C", "option **B**"; the letter itself must be a capital ("the answer is
# a ..." names no option).
_STATED_CHOICE = re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*:?\s*\**\(?((?-i:[A-J]))\)?(?![A-Za-z])",
                            re.IGNORECASE)


def _unwrap(text: str) -> str:
    previous = None
    while previous != text:
        previous, text = text, _WRAPPERS.sub(r"\1", text)
    return text.strip()


def choice_letter(text: str) -> Optional[str]:
    """The option letter an answer names: "C", "(C)", "C)", "C. 42", "\\text{(C)}"."""
    match = _LETTER.match(_unwrap(text))
    return match.group(1).upper() if match else None


def _is_choice_key(reference: str) -> bool:
    return bool(re.fullmatch(r"\(?[A-J]\)?", _unwrap(reference)))


def _plain(text: str) -> str:
    return re.sub(r"[\s.,;:!'\"`]+", "", _unwrap(text)).lower()


def verify_stem(answer: str, ground_truth: Any, cfg: RewardsConfig) -> RewardResult:
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise GroundTruthError(f"stem ground_truth must be a non-empty string, got {ground_truth!r:.200}")
    boxed = boxed_answers(answer)
    if _is_choice_key(ground_truth):
        key = choice_letter(ground_truth)
        if boxed:
            letter = choice_letter(boxed[-1])
        else:
            stated = _STATED_CHOICE.findall(answer)
            letter = stated[-1].upper() if stated else None
        if letter is None:
            return format_failure("no choice letter", answer=boxed[-1] if boxed else None)
        return RewardResult(float(letter == key), details={"answer": letter})
    if not boxed:
        return format_failure("no \\boxed{} answer")
    if not any(boxed):
        return format_failure("empty \\boxed{}")
    shown, reference = ", ".join(boxed), reference_answers(ground_truth)
    gold = parse_gold(reference)
    if gold:
        ok, _ = answers_match(gold, boxed)
        if ok:
            return RewardResult(1.0, details={"answer": shown})
    return RewardResult(float(_plain(shown) == _plain(", ".join(reference))), details={"answer": shown})


# Multiple-choice keys (a letter) and short answers, both in \boxed{}: math's instruction and checks.
DOMAIN = Domain(
    "stem", verify=verify_stem, instruction=INSTRUCTION, check_ground_truth=check_ground_truth, warm=warm,
    prepare=PrepareSource("hf:EricLu/SCP-116K", "scp116k"),
    example="A 2 kg mass moves at 3 m/s. What is its kinetic energy in joules?", title="STEM", order=2, headline="pass@1", answers=True)
