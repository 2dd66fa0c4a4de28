"""Lossless JSON for ground truths, and parsing fields that hold JSON text.

Plain JSON turns tuples into lists and integer dict keys into strings, and some Reasoning Gym
scorers compare against exactly those objects (arc_agi and rearc compare tuple grids: a plain
round trip turns a correct answer's score from 1.0 into 0.05); gsm_symbolic keeps
``fractions.Fraction`` values in its metadata, which plain JSON cannot store at all. Files
therefore store ground truths through :func:`encode`, which tags what JSON cannot express, and
:func:`decode` restores it. Plain JSON passes through both unchanged. :func:`parse_field` reads a field that holds
JSON text (Arrow columns store nested values of varying shape that way).
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

from megatron_prorl.data.schema import BadRow

_TUPLE, _SET, _ITEMS, _FRACTION = "__tuple__", "__set__", "__items__", "__fraction__"


def encode(obj: Any) -> Any:
    """A JSON-native copy of ``obj`` with tuples, sets and non-string keys tagged."""
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode(v) for k, v in obj.items()}
        return {_ITEMS: [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [encode(v) for v in obj]}
    if isinstance(obj, (set, frozenset)):
        return {_SET: [encode(v) for v in sorted(obj, key=repr)]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, Fraction):
        return {_FRACTION: str(obj)}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in JSON: {obj!r:.60}")


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, value), = obj.items()
            if tag == _TUPLE:
                return tuple(decode(v) for v in value)
            if tag == _SET:
                return {decode(v) for v in value}
            if tag == _ITEMS:
                return {decode(k): decode(v) for k, v in value}
            if tag == _FRACTION:
                return Fraction(value)
        return {k: decode(v) for k, v in obj.items()}
    return obj


def parse_field(text: Any, what: str) -> Any:
    """A field that may hold JSON text (as Arrow columns do): parsed if a string, else as is;
    :class:`BadRow` naming ``what`` if it does not parse."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRow(f"{what} is not valid JSON ({exc.msg} at char {exc.pos})") from None
