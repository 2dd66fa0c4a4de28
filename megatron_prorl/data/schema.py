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

A row's domain is any registered task domain (:data:`megatron_prorl.domains.DOMAINS`), whose
record checks the ground truth's shape (a domain that gives no check: present).
:func:`check_row` enforces these shapes; loaders call it on every row and count what fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from megatron_prorl import domains
from megatron_prorl.domains.result import show


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
        raise BadRow(f"prompt must be a non-empty string, got {show(row.prompt)}")
    check_domain(row.domain)
    if not isinstance(row.source, str) or not isinstance(row.id, str):
        raise BadRow("source and id must be strings")
    if not isinstance(row.extra, dict):
        raise BadRow(f"extra must be a dict, got {type(row.extra).__name__}")
    try:
        domains.get(row.domain).check_ground_truth(row.ground_truth)
    except ValueError as exc:
        raise BadRow(str(exc)) from None


def check_domain(domain: str) -> None:
    if domain not in domains.DOMAINS:
        raise BadRow(f"unknown domain {domain!r} (expected one of {', '.join(domains.names())})")
