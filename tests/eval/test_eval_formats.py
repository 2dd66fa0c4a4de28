"""The benchmark formats of `prorl eval`, on small files written in each public layout, read
through SOURCE arguments as the command reads them."""

from __future__ import annotations

import csv
import json

import pytest

from megatron_prorl.errors import DataError
from megatron_prorl.eval.sources import load_sources
from megatron_prorl.rewards import score


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_math_benchmarks(tmp_path):
    aime = _jsonl(tmp_path / "aime_2024.jsonl", [  # HuggingFaceH4/aime_2024
        {"id": 60, "problem": "Find x.", "solution": "... so \\boxed{204}", "answer": "204", "url": "u",
         "year": "2024"}])
    aime25 = _jsonl(tmp_path / "aime2025.jsonl", [{"question": "Find y.", "answer": "70"}])  # opencompass/AIME2025
    math500 = _jsonl(tmp_path / "math500.jsonl", [  # HuggingFaceH4/MATH-500
        {"problem": "Simplify.", "solution": "\\boxed{\\frac{1}{2}}", "answer": "\\frac{1}{2}", "subject": "Algebra",
         "level": 2, "unique_id": "test/algebra/1.json"}])
    olympiad = _jsonl(tmp_path / "olympiadbench.jsonl", [  # Hothan/OlympiadBench
        {"id": 7, "question": "Both roots?", "final_answer": ["$2$", "$3$"], "is_multiple_answer": True}])
    minerva = _jsonl(tmp_path / "minerva.jsonl", [{"problem": "Compute.", "solution": "It is \\boxed{42}."}])
    sources = load_sources([f"math={p}" for p in (aime, aime25, math500, olympiad, minerva)])
    rows = [s.rows[0] for s in sources]
    assert [r.ground_truth for r in rows] == ["204", "70", "\\frac{1}{2}", "$2$, $3$", "42"]
    assert [r.id for r in rows] == ["60", "aime2025.jsonl#1", "test/algebra/1.json", "7", "minerva.jsonl#1"]
    assert {r.domain for r in rows} == {"math"}
    assert score("math", "\\boxed{0.5}", rows[2].ground_truth) == 1.0


def test_gpqa_csv(tmp_path):
    path = tmp_path / "gpqa_diamond.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                               "Incorrect Answer 3", "Record ID"])
        w.writeheader()
        w.writerow({"Question": "Which is a noble gas?", "Correct Answer": "Argon", "Incorrect Answer 1": "Oxygen",
                    "Incorrect Answer 2": "Iron", "Incorrect Answer 3": "Sodium", "Record ID": "rec1"})
    (row,) = load_sources([f"gpqa={path}"])[0].rows
    assert row.domain == "stem" and row.id == "rec1"
    letter = row.ground_truth
    assert f"({letter}) Argon" in row.prompt and row.prompt.count("\n(") == 4
    assert score("stem", f"\\boxed{{{letter}}}", letter) == 1.0
    assert load_sources([f"gpqa={path}"])[0].rows[0].prompt == row.prompt  # the shuffle is fixed


def test_humaneval_plus(tmp_path):
    test = ("import numpy as np\n\ndef check(candidate):\n    inputs = [[1, 2], [3, 4]]\n"
            "    results = [3, 7]\n    for i, (inp, exp) in enumerate(zip(inputs, results)):\n"
            "        assertion(candidate(*inp), exp, 0)\n")
    path = _jsonl(tmp_path / "humanevalplus.jsonl", [
        {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "entry_point": "add",
         "canonical_solution": "    return a + b\n", "test": test},
        {"task_id": "HumanEval/1", "prompt": "def f(x):\n", "entry_point": "f",
         "test": "def check(candidate):\n    inputs = [[float('inf')]]\n    results = [1]\n"}])
    with pytest.warns(UserWarning, match="not a literal list"):
        (source,) = load_sources([f"humaneval_plus={path}"])
    (row,) = source.rows
    assert row.ground_truth == {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [3, 7]}
    assert "def add(a, b):" in row.prompt and row.id == "HumanEval/0"


def test_code_contests_and_apps(tmp_path):
    cc = _jsonl(tmp_path / "code_contests.jsonl", [{
        "name": "1_A", "description": "Print the sum.",
        "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
        "private_tests": {"input": ["2 2\n"], "output": ["4\n"]},
        "generated_tests": {"input": [], "output": []}, "time_limit": {"seconds": 2, "nanos": 500000000}}])
    apps = _jsonl(tmp_path / "apps.jsonl", [{
        "problem_id": 12, "question": "Echo.", "starter_code": "",
        "input_output": json.dumps({"inputs": ["a\n"], "outputs": ["a\n"]})}])
    rows = [s.rows[0] for s in load_sources([f"code_contests={cc}", f"apps={apps}"])]
    assert rows[0].ground_truth == {"inputs": ["1 2\n", "2 2\n"], "outputs": ["3\n", "4\n"], "time_limit_s": 2.5}
    assert rows[1].ground_truth == {"inputs": ["a\n"], "outputs": ["a\n"]} and rows[1].id == "12"
    assert rows[1].source == "apps"


def test_reasoning_gym_ood_and_difficulty(tmp_path):
    sources = load_sources(["reasoning_gym:boxnet",
                            "reasoning_gym:graph_color?min_num_vertices=12&max_num_vertices=12",
                            "reasoning_gym:graph_color?min_num_vertices=12&max_num_vertices=12"], size=3, seed=1)
    assert [len(s.rows) for s in sources] == [3, 3, 3]
    assert sources[2].label.endswith("#2") and sources[1].rows[0].prompt == sources[2].rows[0].prompt
    assert {r.ground_truth["task"] for s in sources for r in s.rows} == {"boxnet", "graph_color"}


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*missing.jsonl"):
        load_sources([str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        load_sources(["nope:thing"])
    with pytest.raises(ValueError, match="reasoning_gym:not_a_task: unknown task"):
        load_sources(["reasoning_gym:not_a_task"])
