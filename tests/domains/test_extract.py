"""Answer extraction and the rules common to every domain."""

from __future__ import annotations

import pytest

from megatron_prorl.domains import DOMAINS
from megatron_prorl.rewards import score_detailed
from megatron_prorl.domains.text import answer_part, answer_tag, boxed_answers, last_code_block


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{42}.", ["42"]),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", ["\\frac{1}{\\sqrt{2}}"]),  # nested braces
    ("\\boxed{\\{1, 2\\}}", ["\\{1, 2\\}"]),  # escaped braces are content
    ("\\fbox{ 7 }", ["7"]),
    ("\\boxed 5 apples", ["5"]),
    ("\\boxed{}", [""]),
    ("no box", []),
    ("\\boxed{1} and \\boxed{\\frac{1}{2}", []),  # the last one unbalanced: cut off
    ("\\boxedx{3}", []),
])
def test_boxed_answers_reads_a_box(text, expected):
    assert boxed_answers(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{1} papers and \\boxed{2} bins", ["1", "2"]),  # separator within 70 characters
    ("x = \\boxed{3}, y = \\boxed{5}", ["3", "5"]),
    ("\\boxed{1}\\boxed{2}\\boxed{3}", ["1", "2", "3"]),
    ("\\boxed{1} then \\boxed{2}", ["1", "2"]),  # under 10 characters apart: no separator needed
    ("\\boxed{4}, so \\boxed{4}", ["4"]),  # a repeat counts once
    ("\\boxed{2}, \\boxed{4}, \\boxed{2}", ["2", "4", "2"]),  # only an immediate repeat
    ("First \\boxed{7} was wrong. After more work we find \\boxed{9}", ["9"]),  # 10+ apart, no separator
    ("\\boxed{7}, " + "x" * 70 + " \\boxed{9}", ["9"]),  # separator but 70+ apart
    ("\\boxed{3} and again the answer \\boxed{3}", ["3"]),  # same content 10+ apart: not joined
    ("\\boxed{\\boxed{3}}", ["3"]),  # a box around the next one ends the run
    ("\\boxed 2 and \\boxed{3}", ["3"]),  # a brace-less box only counts as the last one
])
def test_boxed_answers_groups_a_multi_part_answer_as_math_verify_does(text, expected):
    from latex2sympy2_extended.math_normalization import extract_boxed_content  # Math-Verify's own rule

    assert boxed_answers(text) == expected
    assert ",".join(expected) == extract_boxed_content(text, mode="last")


def test_answer_part_excludes_reasoning():
    assert answer_part("<think>\\boxed{1}</think>\\boxed{2}") == "\\boxed{2}"
    assert answer_part("reasoning without opening tag</think> final") == " final"  # R1 templates
    assert answer_part("<think>never closed \\boxed{1}") is None
    assert answer_part("no tags at all") == "no tags at all"


def test_answer_tag_and_code_block():
    assert answer_tag("<answer> a </answer> then <answer>b</answer>") == "b"
    assert answer_tag("<answer>unclosed") is None
    text = "```python\nold\n```\n```\nbare\n```\n```bash\nls\n```\n```py\nnew\n```\n"
    assert last_code_block(text) == "new\n"
    assert last_code_block("```\nonly bare\n```") == "only bare\n"
    assert last_code_block("```python\nnever closed") is None
    assert last_code_block("```cpp\nint main(){}\n```") is None


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_truncated_scores_zero_and_flags(domain):
    # A response cut at the length limit is 0 and flagged, whatever it contains.
    result = score_detailed(domain, "\\boxed{1} <answer>1</answer> ```python\nprint(1)\n```", "1", finished=False)
    assert (result.reward, result.truncated, result.reason) == (0.0, True, "truncated")


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_unclosed_think_has_no_answer(domain):
    result = score_detailed(domain, "<think>\\boxed{1} <answer>1</answer>", "1")
    assert (result.reward, result.reason, result.truncated) == (0.0, "unclosed <think>", False)


def test_unknown_domain_raises():
    with pytest.raises(ValueError, match="unknown task domain 'chess'"):
        score_detailed("chess", "e4", "e4")
