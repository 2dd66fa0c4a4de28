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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from megatron_prorl.data import code_tests, jsoncodec
from megatron_prorl.data.schema import BadRow, Row, check_domain
from megatron_prorl.registry import Registry
from megatron_prorl.rewards.text import boxed_answers

STRUCTURED_DOMAINS = ("code", "logic", "ifeval")


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
    if domain in STRUCTURED_DOMAINS:
        truth = jsoncodec.decode(jsoncodec.parse_field(truth, "ground_truth"))
    elif isinstance(truth, str) or domain in ("math", "stem"):
        truth = _answer(truth, "ground_truth")
    else:  # a user-registered domain's structured ground truth, as the file gives it
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


FORMATS: Registry[Format] = Registry("data format", {f.name: f for f in (
    Format("prorl", _prorl, None),
    Format("deepscaler", _deepscaler, "math"),
    Format("eurus2", _eurus2, None),
    Format("scp116k", _scp116k, "stem"),
    Format("llama_nemotron_if", _llama_nemotron_if, "ifeval"),
    Format("taco", _taco, "code"),
    Format("livecodebench", _livecodebench, "code"),
)})


def to_record(row: Row, *, json_strings: bool) -> dict:
    """The ``prorl`` record of ``row`` (inverse of its converter). ``json_strings``: store
    structured ground truths and ``extra`` as JSON strings, as Arrow/Parquet columns need."""
    truth = row.ground_truth
    if row.domain in STRUCTURED_DOMAINS or not isinstance(truth, str):
        truth = jsoncodec.encode(truth)
        truth = json.dumps(truth) if json_strings else truth
    extra = jsoncodec.encode(row.extra)
    return {"prompt": row.prompt, "domain": row.domain, "ground_truth": truth, "source": row.source,
            "id": row.id, "extra": json.dumps(extra) if json_strings else extra}
