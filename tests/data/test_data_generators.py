"""Procedural sources: the arithmetic task the tiny default trains on, and Reasoning Gym tasks
generated offline with their own verifiers."""

from __future__ import annotations

import re

import pytest

from megatron_prorl.data.generators import generate, is_generator
from megatron_prorl.data.schema import check_row


def test_arithmetic_prompt_text_and_answers():
    rows = generate("arithmetic:add", size=500, seed=0)
    for row in rows:
        a, b = map(int, re.fullmatch(r"What is (\d+)\+(\d+)\?", row.prompt).groups())
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert (row.domain, row.ground_truth) == ("math", str(a + b))
        check_row(row)
    assert len({r.prompt for r in rows}) > 450  # varied, not a constant
    assert generate("arithmetic:add", size=500, seed=0) == rows
    assert generate("arithmetic:add", size=500, seed=1) != rows
    assert generate("arithmetic:add", size=20, seed=0) == rows[:20]  # size takes a prefix


def test_arithmetic_options_and_errors():
    rows = generate("arithmetic:add?low=1&high=3", size=50, seed=0)
    assert {r.prompt.split()[2][:-1] for r in rows} <= {f"{a}+{b}" for a in (1, 2, 3) for b in (1, 2, 3)}
    with pytest.raises(ValueError, match="unknown operation"):
        generate("arithmetic:mul", size=1, seed=0)
    with pytest.raises(ValueError, match="low"):
        generate("arithmetic:add?low=9&high=1", size=1, seed=0)
    assert is_generator("arithmetic:add") and is_generator("reasoning_gym:maze")
    assert not is_generator("data/train.jsonl") and not is_generator("arithmetic")


def test_arithmetic_harder_and_unseen_variants():
    # Two terms are what the tiny default trained on: the rows of a plain add, exactly.
    assert generate("arithmetic:add?terms=2", size=200, seed=3) == generate("arithmetic:add", size=200, seed=3)
    rows = generate("arithmetic:add?terms=3&low=100&high=999", size=200, seed=0)
    for row in rows:
        terms = list(map(int, re.fullmatch(r"What is (\d+)\+(\d+)\+(\d+)\?", row.prompt).groups()))
        assert all(100 <= t <= 999 for t in terms) and row.ground_truth == str(sum(terms))
        check_row(row)
    rows = generate("arithmetic:sub", size=300, seed=0)
    for row in rows:
        a, b = map(int, re.fullmatch(r"What is (\d+)-(\d+)\?", row.prompt).groups())
        assert 10 <= b <= a <= 99 and (row.domain, row.ground_truth) == ("math", str(a - b))
        assert row.source == "arithmetic:sub"
        check_row(row)
    assert len({r.prompt for r in rows}) > 250
    assert generate("arithmetic:sub?terms=3", size=1, seed=0)[0].prompt.count("-") == 2
    with pytest.raises(ValueError, match="'terms' >= 2"):
        generate("arithmetic:add?terms=1", size=1, seed=0)


@pytest.mark.parametrize("task", ["graph_color", "basic_arithmetic", "propositional_logic", "leg_counting"])
def test_reasoning_gym_tasks_are_deterministic_and_checkable(task):
    import reasoning_gym

    rows = generate(f"reasoning_gym:{task}", size=4, seed=3)
    assert rows == generate(f"reasoning_gym:{task}", size=4, seed=3)
    assert [r.prompt for r in rows] != [r.prompt for r in generate(f"reasoning_gym:{task}", size=4, seed=4)]
    score = reasoning_gym.get_score_answer_fn(task)
    for row in rows:
        check_row(row)
        entry = row.ground_truth["entry"]
        assert row.domain == "logic" and row.ground_truth["task"] == task and row.prompt == entry["question"]
        if entry["answer"] is not None:  # tasks with many valid answers (graph_color) have no oracle
            assert score(entry["answer"], entry) == 1.0
            assert score("surely wrong", entry) < 1.0


def test_reasoning_gym_config_from_query():
    rows = generate("reasoning_gym:graph_color?min_num_vertices=6&max_num_vertices=6&num_colors=4", size=3, seed=0)
    assert all(r.ground_truth["entry"]["metadata"]["num_vertices"] == 6 for r in rows)


def test_reasoning_gym_errors():
    with pytest.raises(ValueError, match="unknown task"):
        generate("reasoning_gym:no_such_task", size=1, seed=0)
    with pytest.raises(ValueError, match="bad config"):
        generate("reasoning_gym:graph_color?no_such_option=1", size=1, seed=0)
    with pytest.raises(ValueError, match="size must be >= 1"):
        generate("reasoning_gym:graph_color", size=0, seed=0)
