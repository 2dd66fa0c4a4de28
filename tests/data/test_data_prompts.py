"""Prompt encoding: the chat template and instruction, and truncation that keeps them whole."""

from __future__ import annotations

import pytest

from megatron_prorl import domains
from megatron_prorl.data import Row, encode_prompt, render_prompt

INSTRUCTIONS = {name: domains.get(name).instruction for name in domains.names()}
from megatron_prorl.data.prompts import prompt_lengths


def test_recipe_instructions():
    assert INSTRUCTIONS["math"] == "Let's think step by step and output the final answer within \\boxed{}."
    assert "<answer></answer>" in INSTRUCTIONS["logic"] and "```python" in INSTRUCTIONS["code"]


def test_short_prompt_is_not_truncated(char_tokenizer):
    row = Row("What is 23+45?", "math", "68")
    ids, truncated = encode_prompt(char_tokenizer, row, max_prompt_length=1000)
    assert not truncated
    assert char_tokenizer.decode(ids) == render_prompt(char_tokenizer, row)
    assert char_tokenizer.decode(ids) == f"<user>What is 23+45?\n{INSTRUCTIONS['math']}<assistant>"
    assert prompt_lengths(char_tokenizer, [row]) == [len(ids)]


@pytest.mark.parametrize("domain", ["math", "code", "logic", "ifeval"])
def test_truncation_cuts_the_start_of_the_problem(char_tokenizer, domain):
    problem = "".join(f"[{i}]" for i in range(300)) + " So, what is the answer?"
    row = Row(problem, domain, "x")
    full = len(encode_prompt(char_tokenizer, row)[0])
    ids, truncated = encode_prompt(char_tokenizer, row, max_prompt_length=full - 500)
    text = char_tokenizer.decode(ids)
    assert truncated and len(ids) <= full - 500
    question = "So, what is the answer?"
    user_turn_end = f"{question}\n{INSTRUCTIONS[domain]}" if INSTRUCTIONS[domain] else question
    assert text.startswith("<user>") and text.endswith(user_turn_end + "<assistant>")
    assert "[0]" not in text and "[299]" in text


def test_truncation_impossible_when_instruction_alone_is_too_long(char_tokenizer):
    with pytest.raises(ValueError, match="template and instruction alone exceed max_prompt_length=20"):
        encode_prompt(char_tokenizer, Row("What is 23+45?", "math", "68"), max_prompt_length=20)


def test_prompt_lengths_match_encoding(char_tokenizer):
    rows = [Row(f"What is {a}+{b}?", domain, "x")
            for a in (1, 22, 333) for b in (4, 55) for domain in ("math", "logic")]
    rows += rows[:5]  # repeated problems are measured once, reported for every row
    assert prompt_lengths(char_tokenizer, rows, chunk=4) == [len(encode_prompt(char_tokenizer, r)[0]) for r in rows]
