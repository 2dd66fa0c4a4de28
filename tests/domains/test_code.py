"""Code: the last fenced Python block against stdin/stdout and function-call tests, run in the
sandbox (the machine's best mode: bubblewrap when installed)."""

from __future__ import annotations

import json
import time

import pytest

from megatron_prorl.config import RewardsConfig
from megatron_prorl.rewards import CodeExecutionDisabled, GroundTruthError, score, score_detailed
from megatron_prorl.domains.code import stdout_matches, values_match

ADD_TESTS = {"inputs": ["1 2\n", "3 4\n", "10 -5\n"], "outputs": ["3\n", "7\n", "5\n"]}
FAST = RewardsConfig(code_timeout_s=1.5)


def fenced(code: str, tag: str = "python") -> str:
    return f"<think>```python\nprint('reasoning code never runs')\n```</think>Here:\n```{tag}\n{code}\n```\n"


def test_stdin_stdout_all_pass():
    code = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)"
    result = score_detailed("code", fenced(code), ADD_TESTS)
    assert result.reward == 1.0
    assert result.details == {"passed": 3, "total": 3, "tests": ["passed"] * 3}


def test_partial_credit_runs_every_test():
    # Fails the first test with an exception, the second with a wrong answer; the third passes:
    # all tests run, reward = 1/3.
    code = ("a, b = map(int, input().split())\n"
            "if a == 1: raise ValueError('boom')\n"
            "print(a + b + (1 if a == 3 else 0))")
    result = score_detailed("code", fenced(code), ADD_TESTS)
    assert result.reward == pytest.approx(1 / 3)
    assert result.details["tests"] == ["runtime_error", "wrong_answer", "passed"]


def test_function_call_tests_and_solution_class():
    gt = {"fn_name": "two_sum", "inputs": [[[2, 7, 11], 9], [[3, 3], 6]], "outputs": [[0, 1], [[0, 1]]]}
    top_level = "def two_sum(nums, target):\n    seen = {}\n    for i, x in enumerate(nums):\n" \
                "        if target - x in seen: return (seen[target - x], i)\n        seen[x] = i"
    assert score("code", fenced(top_level), gt) == 1.0  # tuples compare as lists; [[0, 1]] unwraps
    leetcode = "class Solution:\n    def two_sum(self, nums, target):\n        return [0, 1]"
    assert score("code", fenced(leetcode), json.dumps(gt)) == 1.0  # and a JSON-string ground truth
    assert score("code", fenced("def other(): pass"), gt) == 0.0


def test_mixed_groups_and_per_test_time_limit():
    gt = [{"inputs": ["2\n"], "outputs": ["4\n"]},
          {"fn_name": "f", "inputs": [[2], [3]], "outputs": [4, 9], "time_limit_s": 0.5}]
    code = ("import time\ndef f(x):\n    if x == 3: time.sleep(5)\n    return x * x\n"
            "if __name__ == '__main__':\n    print(f(int(input())))")
    result = score_detailed("code", fenced(code), gt, cfg=FAST)
    assert result.details["tests"] == ["passed", "passed", "timeout"]
    assert result.reward == pytest.approx(2 / 3)


def test_output_comparison_rules():
    assert stdout_matches("1 2  \n3\n\n", "1 2\n3")  # trailing spaces and blank lines
    assert stdout_matches("0.3333333\n", "0.33333333")  # numbers within 1e-6
    assert stdout_matches("1\n2", "1 2")  # token by token
    assert not stdout_matches("1 2 3", "1 2")
    assert not stdout_matches("0.33", "0.3333333")
    assert values_match([1.0, 2], [1, 2]) and values_match(5, [5]) and not values_match(True, 1)


@pytest.mark.parametrize("response, reason", [
    ("print(1)", "no ```python code block"),
    ("```cpp\nint main() {}\n```", "no ```python code block"),
    (fenced("def f(:\n  pass"), "syntax error"),
    (fenced("x = 1\0"), "syntax error"),
])
def test_malformed(response, reason):
    result = score_detailed("code", response, ADD_TESTS)
    assert (result.reward, result.reason) == (0.0, reason)


def test_total_time_limit_gives_zero():
    # Correct on every test but slow: together past the limit -> 0, even though each passes.
    code = "import time\ntime.sleep(0.6)\na, b = map(int, input().split())\nprint(a + b)"
    start = time.monotonic()
    result = score_detailed("code", fenced(code), ADD_TESTS, cfg=FAST)
    assert result.reward == 0.0 and result.reason.startswith("time limit exceeded")
    assert time.monotonic() - start < 5


def test_ground_truth_errors_and_disabled_execution():
    with pytest.raises(GroundTruthError, match="inputs but"):
        score("code", fenced("print(1)"), {"inputs": ["1"], "outputs": []})
    with pytest.raises(GroundTruthError, match="no tests"):
        score("code", fenced("print(1)"), {"inputs": [], "outputs": []})
    with pytest.raises(GroundTruthError, match="not JSON"):
        score("code", fenced("print(1)"), "{inputs")
    with pytest.raises(CodeExecutionDisabled):
        score("code", fenced("print(1)"), ADD_TESTS, cfg=RewardsConfig(allow_code_execution=False))
