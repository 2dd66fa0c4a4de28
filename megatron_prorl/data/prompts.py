"""Prompt construction: per-domain instruction, then the tokenizer's chat template.

The instructions are part of the recipe and live in each domain's record
(:mod:`megatron_prorl.domains`; the math one is ProRL's verbatim); the tiny embedded model was
trained on exactly these, so changing them changes what it sees.

Over-long prompts: by default the loader drops rows whose rendered prompt exceeds
``rollout.max_prompt_length`` and counts them (``data.overlong_prompts: drop``), because a
truncated problem is a different problem whose reference answer may no longer follow from
it. With ``overlong_prompts: truncate`` the rows are kept and :func:`encode_prompt` cuts the
*start* of the problem text, keeping the chat template and the instruction (which says how to
format the answer) whole; the end of a problem usually holds the question, the examples and
any starter code.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from megatron_prorl import domains
from megatron_prorl.data.schema import Row


# The user turn, as an exported model's prorl_prompt.json states it (str.format fields).
USER_TURN = "{problem}\n{instruction}"
USER_TURN_WITHOUT_INSTRUCTION = "{problem}"


def user_turn(problem: str, domain: str) -> str:
    """The user turn: the problem, then the domain's instruction (its record's) on its own line."""
    instruction = domains.get(domain).instruction
    return (USER_TURN if instruction else USER_TURN_WITHOUT_INSTRUCTION).format(problem=problem,
                                                                                instruction=instruction)


def user_message(row: Row) -> str:
    return user_turn(row.prompt, row.domain)


def render_prompt(tokenizer, row: Row) -> str:
    """The full prompt text the policy continues from (chat template + generation prompt)."""
    return render_user_turn(tokenizer, user_message(row))


def render_user_turn(tokenizer, text: str) -> str:
    """A user turn through the chat template, with the generation prompt after it."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # The rendered template already holds every special token it needs (BOS included).
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def prompt_lengths(tokenizer, rows: Sequence[Row], chunk: int = 1024) -> list[int]:
    """Token count of each row's rendered prompt, for filtering whole datasets: each distinct
    problem is encoded once (procedural sources repeat many), in chunks to bound memory."""
    distinct = list({(r.domain, r.prompt): r for r in rows}.values())
    lengths = {}
    for start in range(0, len(distinct), chunk):
        part = distinct[start:start + chunk]
        for row, ids in zip(part, _encode(tokenizer, [render_prompt(tokenizer, r) for r in part])):
            lengths[row.domain, row.prompt] = len(ids)
    return [lengths[r.domain, r.prompt] for r in rows]


def encode_prompt(tokenizer, row: Row, max_prompt_length: Optional[int] = None) -> tuple[list[int], bool]:
    """The prompt's token ids and whether the problem text had to be cut to fit
    ``max_prompt_length`` (cut from its start; template and instruction stay whole)."""
    ids = _encode(tokenizer, [render_prompt(tokenizer, row)])[0]
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids, False
    problem = _encode(tokenizer, [row.prompt])[0]
    excess = len(ids) - max_prompt_length
    while True:  # token boundaries can shift at the cut, so re-measure; excess only grows
        if excess >= len(problem):
            raise ValueError(f"row {row.id or row.prompt[:40]!r}: the chat template and instruction alone "
                             f"exceed max_prompt_length={max_prompt_length}")
        kept = tokenizer.decode(problem[excess:])
        ids = _encode(tokenizer, [render_prompt(tokenizer, replace(row, prompt=kept))])[0]
        if len(ids) <= max_prompt_length:
            return ids, True
        excess += len(ids) - max_prompt_length
