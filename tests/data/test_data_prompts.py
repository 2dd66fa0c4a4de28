"""Prompt encoding: the chat template and instruction, and truncation that keeps them whole."""

from __future__ import annotations

import pytest

from megatron_prorl import domains
from megatron_prorl.data import Row, encode_prompt, render_prompt

INSTRUCTIONS = {name: domains.get(name).instruction for name in domains.names()}
from megatron_prorl.data.prompts import prompt_lengths
from megatron_prorl.tokenizer import ROLE_TOKENS

USER, ASSISTANT = ROLE_TOKENS["user"], ROLE_TOKENS["assistant"]


def test_recipe_instructions():
    assert INSTRUCTIONS["math"] == "Let's think step by step and output the final answer within \\boxed{}."
    assert "<answer></answer>" in INSTRUCTIONS["logic"] and "```python" in INSTRUCTIONS["code"]


def test_short_prompt_is_not_truncated(tokenizer):
    row = Row("What is 23+45?", "math", "68")
    ids, truncated = encode_prompt(tokenizer, row, max_prompt_length=1000)
    assert not truncated
    assert tokenizer.decode(ids) == render_prompt(tokenizer, row)
    assert tokenizer.decode(ids) == f"{USER}What is 23+45?\n{INSTRUCTIONS['math']}{ASSISTANT}"
    assert prompt_lengths(tokenizer, [row]) == [len(ids)]


@pytest.mark.parametrize("domain", ["math", "code", "logic", "ifeval"])
def test_truncation_cuts_the_start_of_the_problem(tokenizer, domain):
    problem = "".join(f"[{i}]" for i in range(300)) + " So, what is the answer?"
    row = Row(problem, domain, "x")
    full = len(encode_prompt(tokenizer, row)[0])
    ids, truncated = encode_prompt(tokenizer, row, max_prompt_length=full - 500)
    text = tokenizer.decode(ids)
    assert truncated and len(ids) <= full - 500
    question = "So, what is the answer?"
    user_turn_end = f"{question}\n{INSTRUCTIONS[domain]}" if INSTRUCTIONS[domain] else question
    assert text.startswith(USER) and text.endswith(user_turn_end + ASSISTANT)
    assert "[0]" not in text and "[299]" in text


def test_truncation_impossible_when_instruction_alone_is_too_long(tokenizer):
    with pytest.raises(ValueError, match="template and instruction alone exceed max_prompt_length=20"):
        encode_prompt(tokenizer, Row("What is 23+45?", "math", "68"), max_prompt_length=20)


def test_prompt_lengths_match_encoding(tokenizer):
    rows = [Row(f"What is {a}+{b}?", domain, "x")
            for a in (1, 22, 333) for b in (4, 55) for domain in ("math", "logic")]
    rows += rows[:5]  # repeated problems are measured once, reported for every row
    assert prompt_lengths(tokenizer, rows, chunk=4) == [len(encode_prompt(tokenizer, r)[0]) for r in rows]
