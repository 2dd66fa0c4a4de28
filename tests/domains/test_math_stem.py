"""Math (Math-Verify on the \\boxed{} answer, multi-part answers included) and STEM (choice letters,
numeric/symbolic)."""

from __future__ import annotations

import pytest

from megatron_prorl.rewards import GroundTruthError, score, score_detailed


def boxed(answer: str) -> str:
    return f"<think>Let me try \\boxed{{0}} first.</think>The answer is \\boxed{{{answer}}}."


@pytest.mark.parametrize("gold, answer", [
    ("\\frac{1}{2}", "0.5"),  # fraction vs decimal
    ("0.5", "\\dfrac{1}{2}"),
    ("1/2", "\\frac12"),
    ("50\\%", "0.5"),  # percentages
    ("0.25", "25\\%"),
    ("[1,2)", "[1, 2)"),  # intervals
    ("x>0", "(0,\\infty)"),
    ("\\{1,2\\}", "\\{2,1\\}"),  # sets
    ("2\\sqrt{2}", "\\sqrt{8}"),  # symbolic forms
    ("x^2+2x+1", "(x+1)^2"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("3", "x = 3"),
    ("10", "10\\text{ cm}"),  # units stripped
    ("10", "10 cm"),
    ("12", "12 dollars"),  # bare unit word (our normalisation)
    ("90", "90^\\circ"),  # degrees
    ("4", "4\\,\\mathrm{cm}"),
    ("5", "\\$5.00"),
    ("1000", "1,000"),
    ("1000", "1e3"),  # scientific notation (our normalisation)
    ("7", "7."),  # trailing full stop (our normalisation)
    ("\\frac{1}{3}", "0.3333333"),
])
def test_math_equivalences(gold, answer):
    assert score_detailed("math", boxed(answer), gold).reward == 1.0


@pytest.mark.parametrize("gold, answer", [
    ("5", "6"),
    ("\\frac{1}{3}", "0.333"),  # too coarse a decimal
    ("(2,1)", "(1,2)"),  # an ordered pair is not an interval
    ("x^2", "2x"),
    ("0", "{}"),
])
def test_math_wrong(gold, answer):
    assert score_detailed("math", boxed(answer), gold).reward == 0.0


def test_math_reasoning_box_never_counts():
    # The only correct box is inside the reasoning: the answer part has the wrong one.
    assert score("math", "<think>\\boxed{5}</think> \\boxed{4}", "5") == 0.0
    assert score("math", "<think>\\boxed{4}</think> \\boxed{5}", "5") == 1.0


PAPERS_AND_BINS = "There are \\boxed{1} papers and \\boxed{2} bins."  # a reference in several boxes


@pytest.mark.parametrize("response, gold, reward", [
    ("So \\boxed{1} paper and \\boxed{2} bins.", PAPERS_AND_BINS, 1.0),
    ("\\boxed{2} bins and \\boxed{1} paper", PAPERS_AND_BINS, 1.0),  # the parts form a set: any order
    ("\\boxed{1, 2}", PAPERS_AND_BINS, 1.0),  # one box holding both parts
    ("\\boxed{2}", PAPERS_AND_BINS, 0.0),  # the last part alone is not the answer
    ("\\boxed{1} and \\boxed{2} and \\boxed{3}", PAPERS_AND_BINS, 0.0),  # nor is an extra part
    ("\\boxed{\\frac{1}{2}} and \\boxed{0.25}", "\\boxed{0.5} and \\boxed{\\frac14}", 1.0),  # parts compared by value
    ("The roots are \\boxed{-1} and \\boxed{3}.", "\\boxed{3} or \\boxed{-1}", 1.0),
    ("x = \\boxed{3}, y = \\boxed{-5}", "\\boxed{3}", 0.0),  # a multi-part response against one answer
    # An earlier box joins the answer when a comma, "and", "or" or ";" lies within 70 characters ...
    ("We guess \\boxed{4}. Checking, it fails, so the answer is \\boxed{5}.", "\\boxed{5}", 0.0),
    ("We guess \\boxed{4}. That fails. The answer is \\boxed{5}.", "\\boxed{5}", 1.0),  # ... not otherwise
])
def test_math_multi_part_answers_are_read_as_math_verify_reads_them(response, gold, reward):
    from math_verify import parse, verify

    from megatron_prorl.domains.math import _extraction_config

    assert score_detailed("math", response, gold).reward == reward
    # Math-Verify itself, on the raw texts (both boxed), agrees.
    assert verify(parse(gold, _extraction_config()), parse(response, _extraction_config())) == bool(reward)


def test_math_multi_part_details_and_plain_references():
    result = score_detailed("math", boxed("3") + " and \\boxed{-5}", "3, -5")  # a plain reference: one set
    assert (result.reward, result.details["answer"]) == (1.0, "3, -5")
    assert score("math", "x = \\boxed{3}, y = \\boxed{-5}", "-5") == 0.0
    assert score_detailed("math", "\\boxed{}, \\boxed{ }", "5").reason == "empty \\boxed{}"


@pytest.mark.parametrize("response, reason", [
    ("The answer is 5.", "no \\boxed{} answer"),
    ("\\boxed{}", "empty \\boxed{}"),
    ("\\boxed{\\frac{1}{2}", "no \\boxed{} answer"),  # unbalanced
    ("\\boxed{)(}", "unparsable answer"),
])
def test_math_malformed(response, reason):
    result = score_detailed("math", response, "5")
    assert (result.reward, result.reason) == (0.0, reason)


def test_math_reference_forms():
    assert score("math", boxed("3"), "The answer is \\boxed{3}") == 1.0  # a boxed reference
    assert score("math", boxed("3"), 3) == 1.0  # a number
    with pytest.raises(GroundTruthError, match="math ground_truth"):
        score("math", boxed("3"), {"answer": 3})
    with pytest.raises(GroundTruthError, match="not parsable"):
        score("math", boxed("3"), "")


@pytest.mark.parametrize("response, key, reward", [
    ("\\boxed{C}", "C", 1.0),
    ("\\boxed{(C)}", "C", 1.0),
    ("\\boxed{\\text{C}}", "(C)", 1.0),
    ("\\boxed{C) 42 J}", "C", 1.0),
    ("\\boxed{B}", "C", 0.0),
    ("After all that, the answer is (D).", "D", 1.0),  # no box: a stated choice
    ("Answer: A", "D", 0.0),
    ("The answer is a tricky one: option **D**", "D", 1.0),  # "a" is a word, not option A
    ("<think>the answer is (D)</think> Answer: A", "D", 0.0),
])
def test_stem_multiple_choice(response, key, reward):
    assert score("stem", response, key) == reward


def test_stem_multiple_choice_malformed():
    result = score_detailed("stem", "I am not sure.", "B")
    assert (result.reward, result.reason) == (0.0, "no choice letter")


@pytest.mark.parametrize("response, gold, reward", [
    ("\\boxed{9.8\\text{ m/s}^2}", "9.8", 1.0),
    ("\\boxed{6.02\\times10^{23}}", "6.02e23", 1.0),
    ("\\boxed{\\frac{h}{2\\pi}}", "\\frac{h}{2 \\pi}", 1.0),
    ("\\boxed{\\text{exothermic}}", "Exothermic", 1.0),  # short text answers
    ("\\boxed{\\text{endothermic}}", "exothermic", 0.0),
    ("\\boxed{3.1}", "3.14", 0.0),
])
def test_stem_short_answers(response, gold, reward):
    assert score("stem", response, gold) == reward


def test_stem_multi_part_answers():
    assert score("stem", "t = \\boxed{2.0}, h = \\boxed{19.6}", "2, 19.6") == 1.0
    assert score("stem", "t = \\boxed{2.0}, h = \\boxed{19.6}", "19.6") == 0.0
    assert score("stem", "\\boxed{19.6}", "t = \\boxed{2}, h = \\boxed{19.6}") == 0.0  # a boxed reference
    assert score("stem", "\\boxed{19.6} and \\boxed{2}", "t = \\boxed{2}, h = \\boxed{19.6}") == 1.0
    assert score("stem", "I think \\boxed{A}, no: \\boxed{C}", "C") == 1.0  # a choice is the last box


def test_stem_malformed():
    assert score_detailed("stem", "It is 9.8", "9.8").reason == "no \\boxed{} answer"
    with pytest.raises(GroundTruthError):
        score("stem", "\\boxed{1}", "")
