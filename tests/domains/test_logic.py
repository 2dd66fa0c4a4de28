"""Logic puzzles: Reasoning Gym's own scorers on the <answer> text (entries generated here)."""

from __future__ import annotations

import json

import pytest
import reasoning_gym  # a declared dependency: missing, the module must fail, not skip

from megatron_prorl.rewards import GroundTruthError, score, score_detailed


def puzzle(task: str, seed: int = 7) -> dict:
    entry = reasoning_gym.create_dataset(task, size=1, seed=seed)[0]
    return {"task": task, "entry": entry}


@pytest.mark.parametrize("task", ["basic_arithmetic", "letter_counting", "word_sorting", "spell_backward"])
def test_correct_and_wrong(task):
    gt = puzzle(task)
    answer = gt["entry"]["answer"]
    assert score("logic", f"<think>hmm</think><answer>{answer}</answer>", gt) == 1.0
    assert score("logic", "<answer>certainly not this</answer>", gt) == 0.0


def test_continuous_partial_credit():
    gt = puzzle("spell_backward")
    answer = gt["entry"]["answer"]
    partial = score("logic", f"<answer>{answer[:-1]}</answer>", gt)
    assert 0.0 < partial < 1.0


def test_reasoning_never_counts_and_last_tag_wins():
    gt = puzzle("basic_arithmetic")
    answer = gt["entry"]["answer"]
    assert score("logic", f"<think><answer>{answer}</answer></think>no tags here", gt) == 0.0
    assert score("logic", f"<answer>0 0</answer> wait <answer>{answer}</answer>", gt) == 1.0


def test_malformed_answer():
    result = score_detailed("logic", "the answer is 42", puzzle("basic_arithmetic"))
    assert (result.reward, result.reason) == (0.0, "no <answer> tag")
    # prime_factorization's scorer raises on unparsable text: still a format failure, not an error
    result = score_detailed("logic", "<answer>[[[</answer>", puzzle("prime_factorization"))
    assert (result.reward, result.reason) == (0.0, "answer rejected by the prime_factorization scorer: ValueError")


def test_ground_truth_forms():
    gt = puzzle("basic_arithmetic")
    as_json = json.dumps(gt)  # a JSONL/Parquet row may keep it as a string
    assert score("logic", f"<answer>{gt['entry']['answer']}</answer>", as_json) == 1.0
    with pytest.raises(GroundTruthError, match="unknown Reasoning Gym task 'no_such_task'"):
        score("logic", "<answer>1</answer>", {"task": "no_such_task", "entry": {}})
    with pytest.raises(GroundTruthError, match="must be"):
        score("logic", "<answer>1</answer>", {"entry": {}})
