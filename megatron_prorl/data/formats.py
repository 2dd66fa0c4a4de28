"""Converters from the public formats of ProRL's data sources to :class:`Row`.

A converter takes one raw record (a dict) and returns a :class:`Row`, raises :class:`BadRow`
when the record is malformed (the loader counts it and warns, naming file and row), or raises
:class:`Skip` when it is well formed but unusable for RL with verifiable rewards (counted by
reason, no warning). Field names follow each dataset's card and loader:

- ``prorl``: this project's schema (:mod:`megatron_prorl.data.schema`): prompt, domain,
  ground_truth (structured ones as objects, or as JSON strings in Parquet), source, id, extra.
- ``deepscaler``: agentica-org/DeepScaleR-Preview-Dataset (``deepscaler.json``): ``problem``,
  ``answer``, ``solution``.
- ``eurus2``: PRIME-RL/Eurus-2-RL-Data: ``data_source``, ``prompt`` (chat list: Eurus's system
  prompt, then the user turn), ``ability`` ("math" | "code"), ``reward_model`` ``{"style":
  "rule", "ground_truth": answer, or a JSON test spec for code}``, ``extra_info`` ``{"split",
  "index"}``. The user turn ends with Eurus's own instruction ("Present the answer in LaTex
  format: \\boxed{Your answer}" or "Write Python code to solve the problem. Present the code in
  ```python Your code``` at the end."); it is cut, like the system prompt, because our prompts
  add the recipe's per-domain instruction.
- ``scp116k``: EricLu/SCP-116K: ``domain`` (the discipline), ``problem``, ``matched_solution``
  (the source's reference solution), model solutions ``o1_solution``, ``qwq_solution`` (any
  ``<m>_solution``) each with a flag ``is_<m>_solution_same_with_matched_solution``. See
  :func:`scp_answer` for how the checkable answer is chosen.
- ``llama_nemotron_if``: nvidia/Llama-Nemotron-Post-Training-Dataset, ``RL/instruction_following``:
  ``input`` (chat list), ``args`` ``{"instruction_id_list", "instruction_kwargs"}``,
  ``system_prompt``, ...; and IFEval-style flat rows (google/IFEval: ``key``, ``prompt``,
  ``instruction_id_list``, ``kwargs``; nvidia/Nemotron-RL-instruction_following: ``id`` in place
  of ``key``). Kwargs are cleaned as Arrow null-fills them: ``None`` entries become ``{}`` and
  ``None``-valued keys are dropped, so IFEval's checkers get only the arguments that were set.
- ``taco``: BAAI/TACO: ``question``, ``starter_code``, ``input_output`` (JSON string),
  ``time_limit`` ("2 seconds"), ``name``, ``source``, ``difficulty``, ...
- ``livecodebench``: livecodebench/code_generation_lite: ``question_title``,
  ``question_content``, ``platform``, ``question_id``, ``starter_code``, ``difficulty``,
  ``public_test_cases``, ``private_test_cases``, ``metadata`` (see :mod:`.code_tests`).

Evaluation benchmarks (``prorl eval``):

- ``math``: the math benchmarks' releases, one converter for their field names: the problem in
  ``problem`` / ``Problem`` / ``question`` / ``Question`` (HuggingFaceH4/MATH-500 and
  aime_2024, AI-MO/aimo-validation-aime and -amc, opencompass/AIME2025, math-ai/minervamath,
  Hothan/OlympiadBench), the answer in ``answer`` / ``Answer`` / ``final_answer`` (OlympiadBench:
  a list, joined with ", "), else the last ``\\boxed{}`` of ``solution``; the id in ``id`` /
  ``ID`` / ``unique_id`` / ``question_id``.
- ``apps``: codeparrot/apps (``question``, ``input_output``, ``starter_code``, ``problem_id``):
  TACO's layout, which TACO took from APPS.
- ``code_contests``: deepmind/code_contests: ``name``, ``description``, ``public_tests``,
  ``private_tests``, ``generated_tests`` (each ``{"input": [str], "output": [str]}``, all
  three used), ``time_limit`` (``{"seconds", "nanos"}``).
- ``humaneval_plus``: evalplus/humanevalplus: ``task_id``, ``prompt`` (signature and
  docstring), ``entry_point``, ``test``: evalplus's ``def check(candidate)`` with literal
  ``inputs = [...]`` and ``results`` / ``exp_out = [...]`` lists (evalplus
  ``tools/humaneval/to_original_fmt.py``), read with ``ast.literal_eval``, never executed.
  Tests whose values are not literals (``float('inf')``) make the row bad. The harness's
  float tolerance (1e-6) stands in for evalplus's per-task ``atol``.
- ``gpqa``: Idavidrein/gpqa (``gpqa_diamond.csv``): ``Question``, ``Correct Answer``,
  ``Incorrect Answer 1..3``, ``Record ID``. The four options are shuffled by a permutation
  seeded with the question text (the same on every machine) and labelled A-D; the ground
  truth is the correct option's letter.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from megatron_prorl import domains
from megatron_prorl.data import code_tests, jsoncodec
from megatron_prorl.data.schema import BadRow, Row, check_domain
from megatron_prorl.domains.text import boxed_answers
from megatron_prorl.registry import Registry


class Skip(Exception):
    """A well-formed record that is not usable (the message is the reason, used as a count key)."""


@dataclass(frozen=True)
class Format:
    name: str
    convert: Callable[[dict], Row]
    # The one domain every row of this format has; None: the rows say (prorl, eurus2).
    domain: Optional[str]


def _field(rec: dict, key: str) -> Any:
    if rec.get(key) is None:
        raise BadRow(f"missing field {key!r}")
    return rec[key]


def _text(rec: dict, key: str) -> str:
    value = _field(rec, key)
    if not isinstance(value, str):
        raise BadRow(f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(f"field {key!r} is empty")
    return value


def _answer(value: Any, key: str) -> str:
    """A reference answer: a non-empty string (numbers are accepted and written as strings)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"field {key!r} must be a non-empty answer string, got {value!r:.40}")
    return value.strip()


def _user_turn(messages: Any, key: str) -> str:
    """The last user message of a chat list (a plain string passes through)."""
    if isinstance(messages, str) and messages.strip():
        return messages
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str) and content.strip():
                    return content
    raise BadRow(f"field {key!r} has no non-empty user message")


def _prorl(rec: dict) -> Row:
    domain = _text(rec, "domain")
    check_domain(domain)
    truth = _field(rec, "ground_truth")
    record = domains.get(domain)
    if record.structured_ground_truth:
        truth = jsoncodec.decode(jsoncodec.parse_field(truth, "ground_truth"))
    elif isinstance(truth, str) or record.answers:
        truth = _answer(truth, "ground_truth")
    else:  # a structure the domain's record does not declare: kept as the file gives it
        truth = jsoncodec.decode(truth)
    extra = jsoncodec.decode(jsoncodec.parse_field(rec.get("extra") or {}, "extra"))
    return Row(prompt=_text(rec, "prompt"), domain=domain, ground_truth=truth,
               source=str(rec.get("source") or ""), id=str(rec.get("id") or ""), extra=extra)


def _deepscaler(rec: dict) -> Row:
    return Row(prompt=_text(rec, "problem"), domain="math",
               ground_truth=_answer(_field(rec, "answer"), "answer"), source="deepscaler")


_EURUS_SUFFIXES = {
    "math": re.compile(r"\s*Present the answer in LaTex format: \\boxed\{Your answer\}\s*$"),
    "code": re.compile(r"\s*Write Python code to solve the problem\. Present the code in\s*"
                       r"```python\s*Your code\s*```\s*at the end\.\s*$"),
}


def _eurus2(rec: dict) -> Row:
    ability = _text(rec, "ability")
    if ability not in _EURUS_SUFFIXES:
        raise BadRow(f"unknown ability {ability!r} (expected 'math' or 'code')")
    prompt = _EURUS_SUFFIXES[ability].sub("", _user_turn(_field(rec, "prompt"), "prompt"))
    reward_model = _field(rec, "reward_model")
    if not isinstance(reward_model, dict):
        raise BadRow("field 'reward_model' must be an object")
    truth = _field(reward_model, "ground_truth")
    truth = code_tests.apps_tests(truth) if ability == "code" else _answer(truth, "reward_model.ground_truth")
    info = rec.get("extra_info") if isinstance(rec.get("extra_info"), dict) else {}
    row_id = f"eurus2:{info['split']}:{info['index']}" if "split" in info and "index" in info else ""
    return Row(prompt=prompt, domain=ability, ground_truth=truth,
               source=f"eurus2:{rec.get('data_source') or ability}", id=row_id)


def final_answer(solution: str) -> Optional[str]:
    """A solution's final boxed answer as a reference: the box's content, or for a multi-part
    answer the parts boxed again (the verifiers read them as Math-Verify does); None without one."""
    parts = boxed_answers(solution)
    if len(parts) <= 1:
        return parts[0] if parts else None
    return ", ".join(f"\\boxed{{{p}}}" for p in parts)


_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{4,}")


def checkable(answer: Optional[str]) -> bool:
    """A short final answer, not prose: at most 128 characters and 3 plain words of 4+ letters
    (LaTeX commands such as \\frac do not count). A heuristic stand-in for the paper's filter."""
    return bool(answer) and len(answer) <= 128 and len(_PROSE_WORD.findall(answer)) <= 3


def scp_answer(rec: dict) -> str:
    """SCP-116K's checkable answer: the final boxed answer of the reference solution, else of a
    model solution the dataset flags as agreeing with the reference. :class:`Skip` if there is none."""
    candidates = [_text(rec, "matched_solution")]
    for key, value in rec.items():
        model = re.fullmatch(r"is_(\w+)_solution_same_with_matched_solution", key)
        if model and value is True and isinstance(rec.get(f"{model.group(1)}_solution"), str):
            candidates.append(rec[f"{model.group(1)}_solution"])
    for solution in candidates:
        answer = final_answer(solution)
        if checkable(answer):
            return answer
    raise Skip("no checkable final answer")


def _scp116k(rec: dict) -> Row:
    return Row(prompt=_text(rec, "problem"), domain="stem", ground_truth=scp_answer(rec),
               source="scp116k", extra={"discipline": rec.get("domain") or ""})


def _ifeval_kwargs(kwargs: Any, count: int) -> list[dict]:
    if not isinstance(kwargs, list) or len(kwargs) != count:
        raise BadRow(f"kwargs must be a list with one entry per instruction id ({count})")
    if not all(k is None or isinstance(k, dict) for k in kwargs):
        raise BadRow("each kwargs entry must be an object or null")
    return [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]


def _llama_nemotron_if(rec: dict) -> Row:
    if "args" in rec:  # Llama-Nemotron RL/instruction_following
        args = _field(rec, "args")
        if not isinstance(args, dict):
            raise BadRow("field 'args' must be an object")
        prompt = _user_turn(_field(rec, "input"), "input")
        ids, kwargs = args.get("instruction_id_list"), args.get("instruction_kwargs")
    else:  # IFEval-style flat row
        prompt, ids, kwargs = _text(rec, "prompt"), rec.get("instruction_id_list"), rec.get("kwargs")
    if not isinstance(ids, list) or not ids:
        raise BadRow("missing or empty instruction_id_list")
    row_id = rec.get("key", rec.get("id"))
    return Row(prompt=prompt, domain="ifeval", source="llama_nemotron_if",
               ground_truth={"instruction_id_list": ids, "kwargs": _ifeval_kwargs(kwargs, len(ids))},
               id="" if row_id is None else str(row_id))


def _taco(rec: dict) -> Row:
    tests = code_tests.apps_tests(_field(rec, "input_output"))
    limit = code_tests.parse_time_limit(rec.get("time_limit"))
    if limit is not None:
        tests["time_limit_s"] = limit
    return Row(prompt=code_tests.with_starter_code(_text(rec, "question"), rec.get("starter_code")),
               domain="code", ground_truth=tests, source=f"taco:{rec.get('source') or 'unknown'}")


def _livecodebench(rec: dict) -> Row:
    tests = code_tests.livecodebench_tests(_field(rec, "public_test_cases"),
                                           rec.get("private_test_cases") or "[]", rec.get("metadata"))
    return Row(prompt=code_tests.with_starter_code(_text(rec, "question_content"), rec.get("starter_code")),
               domain="code", ground_truth=tests, source=f"livecodebench:{rec.get('platform') or 'unknown'}",
               id=str(rec.get("question_id") or ""), extra={"difficulty": rec.get("difficulty") or ""})


def _first(rec: dict, keys: tuple[str, ...]) -> str:
    for key in keys:
        if rec.get(key) is not None:
            return key
    raise BadRow(f"missing field: none of {', '.join(map(repr, keys))}")


def _math(rec: dict) -> Row:
    prompt = _text(rec, _first(rec, ("problem", "Problem", "question", "Question")))
    key = next((k for k in ("answer", "Answer", "final_answer") if rec.get(k) not in (None, "", [])), None)
    if key is None:
        boxed = final_answer(_text(rec, "solution")) if rec.get("solution") is not None else None
        if boxed is None:
            raise BadRow("no answer: none of 'answer', 'Answer', 'final_answer', or a \\boxed{} in 'solution'")
        answer = _answer(boxed, "solution")
    elif isinstance(rec[key], list):
        answer = ", ".join(_answer(a, key) for a in rec[key])
    else:
        answer = _answer(rec[key], key)
    row_id = next((rec[k] for k in ("id", "ID", "unique_id", "question_id") if rec.get(k) is not None), "")
    return Row(prompt=prompt, domain="math", ground_truth=answer, source="math", id=str(row_id))


def _apps(rec: dict) -> Row:
    row = _taco(rec)
    row.source = "apps"
    row.id = str(rec.get("problem_id") if rec.get("problem_id") is not None else "")
    return row


def _code_contests(rec: dict) -> Row:
    inputs, outputs = [], []
    for key in ("public_tests", "private_tests", "generated_tests"):
        tests = jsoncodec.parse_field(rec.get(key) or {}, key)
        if not isinstance(tests, dict) or len(tests.get("input") or []) != len(tests.get("output") or []):
            raise BadRow(f"field {key!r} must be {{'input': [str], 'output': [str]}} of equal lengths")
        inputs += tests.get("input") or []
        outputs += tests.get("output") or []
    if not inputs:
        raise BadRow("no tests in public_tests, private_tests or generated_tests")
    truth: dict = {"inputs": inputs, "outputs": outputs}
    limit = rec.get("time_limit")
    if isinstance(limit, dict) and (limit.get("seconds") or limit.get("nanos")):
        truth["time_limit_s"] = (limit.get("seconds") or 0) + (limit.get("nanos") or 0) / 1e9
    return Row(prompt=_text(rec, "description"), domain="code", ground_truth=truth, source="code_contests",
               id=str(rec.get("name") or ""))


def _literal_list(tree: ast.Module, names: tuple[str, ...]) -> list:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in names for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise BadRow(f"test: {names[0]} is not a literal list (e.g. holds float('inf'))") from None
            if isinstance(value, list):
                return value
    raise BadRow(f"test: no literal '{names[0]} = [...]' in check(candidate)")


def _humaneval_plus(rec: dict) -> Row:
    entry = _text(rec, "entry_point")
    try:
        tree = ast.parse(_text(rec, "test"))
    except SyntaxError as exc:
        raise BadRow(f"test is not Python: {exc}") from None
    inputs = _literal_list(tree, ("inputs",))
    outputs = _literal_list(tree, ("results", "exp_out"))
    if len(inputs) != len(outputs) or not all(isinstance(i, (list, tuple)) for i in inputs):
        raise BadRow(f"test: {len(inputs)} input argument lists but {len(outputs)} results")
    prompt = ("Complete the following Python function; keep its name and signature.\n\n```python\n"
              f"{_text(rec, 'prompt').strip()}\n```")
    return Row(prompt=prompt, domain="code", source="humaneval_plus", id=str(rec.get("task_id") or ""),
               ground_truth={"fn_name": entry, "inputs": [list(i) for i in inputs], "outputs": outputs})


def _gpqa(rec: dict) -> Row:
    question = _text(rec, "Question")
    options = [_text(rec, "Correct Answer")] + [_text(rec, f"Incorrect Answer {i}") for i in (1, 2, 3)]
    order = list(range(4))
    random.Random(hashlib.sha256(question.encode()).digest()).shuffle(order)
    letters = "ABCD"
    lines = [f"({letters[i]}) {options[j].strip()}" for i, j in enumerate(order)]
    return Row(prompt=question.strip() + "\n\n" + "\n".join(lines), domain="stem",
               ground_truth=letters[order.index(0)], source="gpqa", id=str(rec.get("Record ID") or ""))


FORMATS: Registry[Format] = Registry("data format", {f.name: f for f in (
    Format("prorl", _prorl, None),
    Format("deepscaler", _deepscaler, "math"),
    Format("eurus2", _eurus2, None),
    Format("scp116k", _scp116k, "stem"),
    Format("llama_nemotron_if", _llama_nemotron_if, "ifeval"),
    Format("taco", _taco, "code"),
    Format("livecodebench", _livecodebench, "code"),
    Format("math", _math, "math"),
    Format("apps", _apps, "code"),
    Format("code_contests", _code_contests, "code"),
    Format("humaneval_plus", _humaneval_plus, "code"),
    Format("gpqa", _gpqa, "stem"),
)})


def to_record(row: Row, *, json_strings: bool) -> dict:
    """The ``prorl`` record of ``row`` (inverse of its converter). ``json_strings``: store
    structured ground truths and ``extra`` as JSON strings, as Arrow/Parquet columns need."""
    truth = row.ground_truth
    if domains.get(row.domain).structured_ground_truth or not isinstance(truth, str):
        truth = jsoncodec.encode(truth)
        truth = json.dumps(truth) if json_strings else truth
    extra = jsoncodec.encode(row.extra)
    return {"prompt": row.prompt, "domain": row.domain, "ground_truth": truth, "source": row.source,
            "id": row.id, "extra": json.dumps(extra) if json_strings else extra}
