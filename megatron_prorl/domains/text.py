"""Pure text extraction shared by the verifiers: the answer part of a response, the boxed
contents of its (possibly multi-part) final answer, the last <answer> tag, the last fenced
Python block."""

from __future__ import annotations

import re
from typing import Optional

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def answer_part(response: str) -> Optional[str]:
    """The text after the reasoning: after the last ``</think>``.

    None when a ``<think>`` was opened and never closed (everything is reasoning, so there is no
    answer). A response without think tags is all answer (models that do not reason in tags; for
    R1-style templates the opening tag is in the prompt and only ``</think>`` appears here).
    """
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE):]
    if THINK_OPEN in response:
        return None
    return response


_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Math-Verify's rule for one answer written in several boxes (latex2sympy2_extended 1.11.0, the
# normaliser of math-verify 0.9.0: math_normalization.extract_boxed_content, mode "last").
_BOX_GAP_NEAR, _BOX_GAP_FAR = 10, 70
_BOX_SEPARATOR = re.compile(r"\b(and|or)\b|,|;")


def _box(text: str, match: re.Match) -> Optional[tuple[str, int, bool]]:
    """(content, end just past it, braced?) of the box ``match`` opens; None when unbalanced."""
    i = match.end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        token = re.match(r"[^\s$]+", text[i:])
        return (token.group(0), i + token.end(), False) if token else None
    depth, start = 0, i + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i], i + 1, True
        i += 1
    return None


def boxed_answers(text: str) -> list[str]:
    """The final answer's boxed contents, stripped, left to right: one for ``\\boxed{5}``,
    several for a multi-part answer (``x = \\boxed{3}, y = \\boxed{5}``; ``\\boxed{1} papers and
    \\boxed{2} bins``), grouped as Math-Verify groups them: walking left from the last box, an
    earlier box belongs to the answer while the text between it and the next one is under 10
    characters, or under 70 with "and", "or", "," or ";" in it and a content other than the
    next one's; an immediate repeat counts once.

    A box is ``\\boxed{...}`` or ``\\fbox{...}`` with nested braces balanced and escaped braces
    (``\\{``) taken as content; ``\\boxed 5`` (no braces) gives the next token, as the last box
    only. [] when there is no box or the last one is unbalanced (cut off)."""
    answers: list[str] = []
    start = len(text)  # where the leftmost box taken so far opens
    for match in reversed(list(_BOXED.finditer(text))):
        box = _box(text, match)
        if box is None or box[1] > start or (answers and not box[2]):
            break  # unbalanced, around the next box, or brace-less and not the last
        content, gap = box[0].strip(), text[box[1]:start]
        if answers and not (len(gap) < _BOX_GAP_NEAR or (
                content != answers[-1] and len(gap) < _BOX_GAP_FAR and _BOX_SEPARATOR.search(gap))):
            break
        if not answers or content != answers[-1]:
            answers.append(content)
        start = match.start()
    return answers[::-1]


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def answer_tag(text: str) -> Optional[str]:
    """Stripped content of the last ``<answer>...</answer>``; None when there is none."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
PYTHON_TAGS = ("python", "py", "python3")


def last_code_block(text: str) -> Optional[str]:
    """The last closed fenced block tagged python/py/python3; failing that the last untagged
    block (models often omit the tag). Blocks in other languages never count."""
    tagged, untagged = None, None
    for match in _FENCE.finditer(text):
        info = match.group(1).strip().split()
        tag = info[0].lower() if info else ""
        if tag in PYTHON_TAGS:
            tagged = match.group(2)
        elif not tag:
            untagged = match.group(2)
    return tagged if tagged is not None else untagged
