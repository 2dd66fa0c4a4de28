"""The one row schema every domain's data is converted into.

A row is what the sampler hands the trainer and what the verifiers score against:
``prompt`` is the problem text (before the chat template and the per-domain instruction),
``ground_truth`` is domain specific:

- math, stem: the reference answer as a string (stem multiple choice: the letter, e.g. "C").
- code: ``{"inputs": [str], "outputs": [str]}`` (stdin/stdout pairs) and/or
  ``{"fn_name": str, "inputs": [[args]], "outputs": [result]}`` (function-call tests), optionally
  ``"time_limit_s"``. Function-call outputs are kept as the source gives them: APPS, TACO and
  Eurus-2 usually wrap each result in a one-element list, so a verifier should accept
  ``result == out`` or ``[result] == out`` (the APPS harness rule). ``fn_name`` may name a
  method of ``class Solution`` (LeetCode style).
- logic: ``{"task": reasoning_gym task name, "entry": the generator's entry dict}``, scored by
  Reasoning Gym's own scorer for that task. The entry is the generator's own object (tuples and
  integer keys included, which some scorers compare against); files store it losslessly
  through :mod:`megatron_prorl.data.jsoncodec`.
- ifeval: ``{"instruction_id_list": [str], "kwargs": [dict]}`` (IFEval constraint ids).

A row's domain is any domain with a verifier (:data:`megatron_prorl.rewards.VERIFIERS`): a
domain registered there is valid here too, its ground truth checked only for presence.
:func:`check_row` enforces these shapes; loaders call it on every row and count what fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    prompt: str
    domain: str
    ground_truth: Any
    source: str = ""
    id: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class BadRow(ValueError):
    """A row that breaks the schema; the message says which field and why."""


def check_row(row: Row) -> None:
    """Raise :class:`BadRow` unless ``row`` follows the schema above."""
    if not isinstance(row.prompt, str) or not row.prompt.strip():
        raise BadRow(f"prompt must be a non-empty string, got {_show(row.prompt)}")
    check_domain(row.domain)
    if not isinstance(row.source, str) or not isinstance(row.id, str):
        raise BadRow("source and id must be strings")
    if not isinstance(row.extra, dict):
        raise BadRow(f"extra must be a dict, got {type(row.extra).__name__}")
    _GROUND_TRUTH_CHECKS.get(row.domain, _check_present)(row.ground_truth)


def domains() -> tuple[str, ...]:
    """Every domain a row may have: those with a verifier."""
    from megatron_prorl.rewards.registry import VERIFIERS  # late: data does not import the verifiers

    return VERIFIERS.names()


def check_domain(domain: str) -> None:
    if domain not in domains():
        raise BadRow(f"unknown domain {domain!r} (expected one of {', '.join(domains())})")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_present(gt: Any) -> None:
    if gt is None:
        raise BadRow("ground_truth is missing")


def _check_answer(gt: Any) -> None:
    if not isinstance(gt, str) or not gt.strip():
        raise BadRow(f"ground_truth must be a non-empty answer string, got {_show(gt)}")


def _check_code(gt: Any) -> None:
    if not isinstance(gt, dict):
        raise BadRow(f"code ground_truth must be a dict of tests, got {type(gt).__name__}")
    inputs, outputs = gt.get("inputs"), gt.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise BadRow("code ground_truth needs 'inputs' and 'outputs' lists")
    if not inputs or len(inputs) != len(outputs):
        raise BadRow(f"code ground_truth has {len(inputs)} inputs and {len(outputs)} outputs "
                     "(need as many of each, at least one)")
    fn_name = gt.get("fn_name")
    if fn_name is not None:
        if not isinstance(fn_name, str) or not fn_name:
            raise BadRow(f"fn_name must be a non-empty string, got {_show(fn_name)}")
        if not all(isinstance(args, list) for args in inputs):
            raise BadRow("function-call tests need each input to be a list of arguments")
    elif not all(isinstance(x, str) for x in inputs + outputs):
        raise BadRow("stdin/stdout tests need string inputs and outputs")
    limit = gt.get("time_limit_s")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise BadRow(f"time_limit_s must be a positive number, got {_show(limit)}")


def _check_logic(gt: Any) -> None:
    if not isinstance(gt, dict) or not isinstance(gt.get("task"), str) or not isinstance(gt.get("entry"), dict):
        raise BadRow("logic ground_truth must be {'task': str, 'entry': dict}")
    entry = gt["entry"]
    if not isinstance(entry.get("question"), str) or not isinstance(entry.get("metadata"), dict):
        raise BadRow("logic entry needs a 'question' string and a 'metadata' dict")
    from reasoning_gym.factory import DATASETS  # late: a 2 s import, needed only for logic rows

    if gt["task"] not in DATASETS:
        raise BadRow(f"unknown reasoning_gym task {gt['task']!r}")


def _check_ifeval(gt: Any) -> None:
    if not isinstance(gt, dict):
        raise BadRow(f"ifeval ground_truth must be a dict, got {type(gt).__name__}")
    ids, kwargs = gt.get("instruction_id_list"), gt.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise BadRow("instruction_id_list must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise BadRow("kwargs must be a list of dicts, one per instruction id")


_GROUND_TRUTH_CHECKS = {
    "math": _check_answer, "stem": _check_answer, "code": _check_code,
    "logic": _check_logic, "ifeval": _check_ifeval,
}
