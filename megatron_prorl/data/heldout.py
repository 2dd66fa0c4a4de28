"""Keeping validation and benchmark problems out of training, by normalised problem text.

:func:`problem_key` is the one normalisation every held-out check uses (``load_data`` against
``data.val``; ``prorl data prepare`` against ``data.val`` and benchmark files): Unicode NFKC,
case folded, all whitespace removed. It catches copies that differ in case, spacing, line
breaks or Unicode forms (full-width digits, non-breaking spaces); it does not catch
paraphrases or a problem embedded in a longer prompt. The domain plays no part: a benchmark
problem is held out of every domain it might turn up in.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Iterable

from megatron_prorl.data.schema import Row


def problem_key(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def held_out_keys(rows: Iterable[Row]) -> set[str]:
    return {problem_key(r.prompt) for r in rows}


def fingerprint(keys: set[str]) -> str:
    """A short digest of a held-out set (what a prepared file was decontaminated against)."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(key.encode() + b"\0")
    return digest.hexdigest()[:16]


def split_held_out(rows: list[Row], keys: set[str]) -> tuple[list[Row], int]:
    """``rows`` whose problem is not in ``keys``, and how many were."""
    kept = [r for r in rows if problem_key(r.prompt) not in keys]
    return kept, len(rows) - len(kept)
