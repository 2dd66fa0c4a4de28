"""Code: the response's last fenced Python block against the problem's tests, in the sandbox.

One sandboxed process per response runs every test (``harness.py``: a fork per test, per-test
limits) and reports what the program printed or returned; the comparison with the expected
outputs happens here, outside the sandbox. Reward = passed / total, all tests run; 0 on a syntax
error or when the tests together exceed ``rewards.code_timeout_s``.

Test formats (the schema's ``ground_truth``, also accepted as a JSON string, or a list of such
groups): stdin/stdout pairs ``{"inputs": [str], "outputs": [str]}`` (APPS/TACO/PRIME/
LiveCodeBench stdin tests), function calls ``{"fn_name": str, "inputs": [[args]], "outputs":
[value]}`` (TACO/PRIME call-based and LiveCodeBench functional tests once their JSON-lines
inputs are parsed into argument lists; a top-level function or a ``class Solution`` method),
optional ``"time_limit_s"`` per test.

Starting a sandbox forks with a ``preexec_fn``, which Python warns is unsafe in a process with
other threads: a multi-threaded trainer should score code through the RewardPool, whose
single-threaded workers start the sandboxes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from megatron_prorl.domains import Domain, PrepareSource
from megatron_prorl.domains.result import (CodeExecutionDisabled, GroundTruthError, RewardResult, format_failure,
                                           ground_truth_json, show)
from megatron_prorl.domains.text import last_code_block
from megatron_prorl.sandbox import harness
from megatron_prorl.sandbox.sandbox import Limits, Sandbox

if TYPE_CHECKING:
    from megatron_prorl.config import RewardsConfig

# Interpreter start-up and the harness around the tests, on top of the tests' own time budget.
STARTUP_GRACE_S = 3.0
OUTPUT_CAP = 1 << 16  # bytes of stdout kept per test (raised for tests whose answer is longer)
FLOAT_TOL = 1e-6


@dataclass(frozen=True)
class Test:
    fn_name: Optional[str]  # None: a stdin/stdout test
    input: Any  # stdin text, or the argument list
    expected: Any
    time_limit_s: Optional[float]


def parse_tests(ground_truth: Any) -> list[Test]:
    groups = ground_truth_json(ground_truth, "code")
    groups = groups if isinstance(groups, list) else [groups]
    tests: list[Test] = []
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("inputs"), list) \
                or not isinstance(group.get("outputs"), list):
            raise GroundTruthError(f"code ground_truth needs 'inputs' and 'outputs' lists, got {group!r:.200}")
        inputs, outputs = group["inputs"], group["outputs"]
        if len(inputs) != len(outputs):
            raise GroundTruthError(f"code ground_truth: {len(inputs)} inputs but {len(outputs)} outputs")
        fn_name = group.get("fn_name") or None
        limit = group.get("time_limit_s")
        for inp, out in zip(inputs, outputs):
            if fn_name is None:
                inp, out = _lines(inp, "input"), _lines(out, "output")
            tests.append(Test(fn_name, inp, out, float(limit) if limit else None))
    if not tests:
        raise GroundTruthError("code ground_truth has no tests")
    return tests


def _lines(value: Any, what: str) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value) + "\n"  # some datasets store stdin as a list of lines
    if not isinstance(value, str):
        raise GroundTruthError(f"code ground_truth stdin/stdout test {what} must be a string, got {value!r:.200}")
    return value


def _numbers_close(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=FLOAT_TOL, abs_tol=FLOAT_TOL)


def stdout_matches(got: str, expected: str) -> bool:
    """Exact after trimming line ends and trailing blank lines; else token by token, numbers
    within a 1e-6 tolerance (the APPS/TACO convention)."""
    if got == expected:
        return True
    trim = lambda s: "\n".join(line.rstrip() for line in s.strip().splitlines())  # noqa: E731
    if trim(got) == trim(expected):
        return True
    a, b = got.split(), expected.split()
    return len(a) == len(b) and all(x == y or _numbers_close(x, y) for x, y in zip(a, b))


def values_match(got: Any, expected: Any) -> bool:
    """Equal after JSON round-trips (tuples are lists), floats within tolerance; an expected
    one-element list also matches its element (TACO wraps call results that way)."""
    if _close(got, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _close(got, expected[0])


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=FLOAT_TOL, abs_tol=FLOAT_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


@lru_cache(maxsize=1)
def harness_source() -> str:
    return Path(harness.__file__).read_text()


@lru_cache(maxsize=None)
def sandbox_for(mode: str, python: str) -> Sandbox:
    return Sandbox(mode, python)


def run_tests(code: str, tests: list[Test], cfg: RewardsConfig, sandbox: Optional[Sandbox] = None) -> dict:
    """Run ``code`` against ``tests`` in one sandbox; the harness report (or a failure dict)."""
    total_s = float(cfg.code_timeout_s)
    caps = [max(OUTPUT_CAP, 2 * len(json.dumps(t.expected)) + 4096) for t in tests]
    job = {"code": code, "total_s": total_s,
           "tests": [dict({"stdin": t.input} if t.fn_name is None else {"fn_name": t.fn_name, "args": t.input},
                          limit_s=t.time_limit_s or total_s, cap=cap) for t, cap in zip(tests, caps)]}
    limits = Limits(wall_s=total_s + STARTUP_GRACE_S, cpu_s=int(math.ceil(total_s)) + 2,
                    memory_mb=cfg.code_memory_mb, max_procs=cfg.code_max_processes,
                    stdout_bytes=6 * sum(caps) + (1 << 16))  # JSON escaping can grow text 6x
    sandbox = sandbox or sandbox_for(cfg.sandbox, cfg.code_python)
    result = sandbox.run([sandbox.setup.python, "-I", "-S", "-c", harness_source()],
                         json.dumps(job).encode(), limits)
    if result.timed_out:
        return {"status": "time_limit"}
    if result.output_exceeded:
        return {"status": "output_limit"}
    try:
        report = json.loads(result.stdout.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        # The harness died without reporting (the program killed it, or memory ran out).
        return {"status": "no_report", "error": result.stderr.decode("utf-8", "replace")[-300:]}
    return report if isinstance(report, dict) else {"status": "no_report"}


def verify_code(answer: str, ground_truth: Any, cfg: RewardsConfig, sandbox: Optional[Sandbox] = None) -> RewardResult:
    if not cfg.allow_code_execution:
        raise CodeExecutionDisabled("rewards.allow_code_execution=false: refusing to run model-written code")
    tests = parse_tests(ground_truth)
    code = last_code_block(answer)
    if code is None:
        return format_failure("no ```python code block")
    report = run_tests(code, tests, cfg, sandbox)
    status = report.get("status")
    if status == "syntax_error":
        return format_failure("syntax error", error=report.get("error", ""))
    if status == "time_limit":
        return format_failure(f"time limit exceeded ({cfg.code_timeout_s:g} s for all tests)")
    if status != "ok" or not isinstance(report.get("tests"), list) or len(report["tests"]) != len(tests):
        return format_failure(f"sandbox: {status}", error=report.get("error", ""))
    passed, outcomes = 0, []
    for test, observed in zip(tests, report["tests"]):
        if not isinstance(observed, dict):  # the program may have scribbled on the report channel
            observed = {"status": "no_report"}
        ok = observed.get("status") == "ok" and (
            stdout_matches(str(observed.get("stdout", "")), test.expected) if test.fn_name is None
            else values_match(observed.get("value"), test.expected))
        passed += ok
        status = observed.get("status")
        outcomes.append("passed" if ok else ("wrong_answer" if status == "ok" else status))
    return RewardResult(passed / len(tests), details={"passed": passed, "total": len(tests), "tests": outcomes})


def check_ground_truth(gt: Any) -> None:
    if not isinstance(gt, dict):
        raise ValueError(f"code ground_truth must be a dict of tests, got {type(gt).__name__}")
    inputs, outputs = gt.get("inputs"), gt.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("code ground_truth needs 'inputs' and 'outputs' lists")
    if not inputs or len(inputs) != len(outputs):
        raise ValueError(f"code ground_truth has {len(inputs)} inputs and {len(outputs)} outputs "
                         "(need as many of each, at least one)")
    fn_name = gt.get("fn_name")
    if fn_name is not None:
        if not isinstance(fn_name, str) or not fn_name:
            raise ValueError(f"fn_name must be a non-empty string, got {show(fn_name)}")
        if not all(isinstance(args, list) for args in inputs):
            raise ValueError("function-call tests need each input to be a list of arguments")
    elif not all(isinstance(x, str) for x in inputs + outputs):
        raise ValueError("stdin/stdout tests need string inputs and outputs")
    limit = gt.get("time_limit_s")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ValueError(f"time_limit_s must be a positive number, got {show(limit)}")


def warm(cfg: RewardsConfig) -> Optional[dict]:
    """Probe the sandbox once per worker; its description is what the pool reports."""
    return sandbox_for(cfg.sandbox, cfg.code_python).describe() if cfg.allow_code_execution else None


DOMAIN = Domain(
    "code", verify=verify_code, check_ground_truth=check_ground_truth, warm=warm,
    instruction=("Write a Python program that solves the problem. Put your final solution in a single "
                 "fenced code block: ```python ... ```."),
    prepare=PrepareSource("hf:PRIME-RL/Eurus-2-RL-Data", "eurus2"),
    example="Read an integer n from standard input and print the sum of the integers from 1 to n.",
    title="Code", order=1, headline="pass@1", structured_ground_truth=True)
