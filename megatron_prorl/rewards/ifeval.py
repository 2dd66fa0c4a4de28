"""Instruction following: IFEval-style verifiable constraints, scored on the answer text.

Each constraint is a small named check in :data:`CHECKS`, keyed by IFEval's instruction id and
taking IFEval's keyword argument names, so IFEval / Llama-Nemotron style ground truths
(``{"instruction_id_list": [...], "kwargs": [{...}, ...]}``) score as they are. The reward is
the fraction of constraints met (ProRL), or all-or-nothing with ``rewards.ifeval_strict``;
both are in ``details``.

Written from IFEval's published semantics, with two deliberate differences: text whose
language cannot be detected does NOT count as written in the requested language (IFEval
counts it as followed, which would reward empty answers), and an empty answer scores 0.
Words are ``\\w+`` runs, as in IFEval; sentences come from a regex splitter that knows common
abbreviations and decimals (IFEval uses a similar regex; no nltk data is needed).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from megatron_prorl.rewards.result import GroundTruthError, RewardResult, format_failure, ground_truth_json

if TYPE_CHECKING:
    from megatron_prorl.config import RewardsConfig

CHECKS: dict[str, Callable[..., bool]] = {}


def check(instruction_id: str):
    def register(fn: Callable[..., bool]) -> Callable[..., bool]:
        CHECKS[instruction_id] = fn
        return fn

    return register


_RELATIONS = {
    "less than": lambda a, b: a < b,
    "at least": lambda a, b: a >= b,
    "at most": lambda a, b: a <= b,
    "more than": lambda a, b: a > b,
    "exactly": lambda a, b: a == b,
}


def _compare(count: int, threshold: int, relation: str) -> bool:
    if relation not in _RELATIONS:
        raise GroundTruthError(f"ifeval relation {relation!r}: expected one of {sorted(_RELATIONS)}")
    return _RELATIONS[relation](count, int(threshold))


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc",
                  "ltd", "co", "no", "fig", "approx", "u.s", "a.m", "p.m")
_ABBREV = re.compile(r"\b(" + "|".join(re.escape(a) for a in _ABBREVIATIONS) + r")\.", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    protected = _ABBREV.sub(lambda m: m.group(1).replace(".", "\0") + "\0", text)
    protected = re.sub(r"(\d)\.(\d)", "\\1\0\\2", protected)  # decimals
    protected = re.sub(r"\b([A-Z])\.(?=\s+[A-Z])", "\\1\0", protected)  # initials: "J. Smith"
    parts = re.split(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n", protected)
    return [p.replace("\0", ".").strip() for p in parts if p.strip()]


@lru_cache(maxsize=1)
def _langdetect():
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0  # langdetect is randomised; fix it so rewards are reproducible
    return detect


def detect_language(text: str) -> str | None:
    from langdetect.lang_detect_exception import LangDetectException

    try:
        return _langdetect()(text)
    except LangDetectException:
        return None


@check("keywords:existence")
def keywords_existence(text: str, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), text, re.IGNORECASE) for k in keywords)


@check("keywords:frequency")
def keywords_frequency(text: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(re.escape(keyword.strip()), text, re.IGNORECASE)), frequency, relation)


@check("keywords:forbidden_words")
def keywords_forbidden(text: str, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE) for w in forbidden_words)


@check("keywords:letter_frequency")
def letter_frequency(text: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _compare(Counter(text.lower())[letter.strip().lower()], let_frequency, let_relation)


@check("language:response_language")
def response_language(text: str, language: str) -> bool:
    detected, wanted = detect_language(text), language.strip().lower()
    # langdetect names Chinese "zh-cn"/"zh-tw"; a bare "zh" accepts either
    return detected is not None and (detected == wanted or ("-" not in wanted and detected.split("-")[0] == wanted))


@check("length_constraints:number_sentences")
def number_sentences(text: str, num_sentences: int, relation: str) -> bool:
    return _compare(len(split_sentences(text)), num_sentences, relation)


@check("length_constraints:number_paragraphs")
def number_paragraphs(text: str, num_paragraphs: int) -> bool:
    """Paragraphs separated by the markdown divider ``***``."""
    parts = re.split(r"\s?\*\*\*\s?", text)
    if any(not p.strip() for p in parts[1:-1]):
        return False  # an empty paragraph between two dividers
    return sum(1 for p in parts if p.strip()) == int(num_paragraphs)


@check("length_constraints:number_words")
def number_words(text: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(text), num_words, relation)


@check("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(text: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Paragraphs separated by a blank line; paragraph ``nth_paragraph`` (1-based) starts with
    ``first_word`` (case and trailing punctuation ignored)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) != int(num_paragraphs) or not 1 <= int(nth_paragraph) <= len(paragraphs):
        return False
    word = paragraphs[int(nth_paragraph) - 1].split()[0].lstrip("'\"*_#")
    word = re.split(r"[.,?!'\"*:;]", word)[0]
    return word.lower() == first_word.strip().lower()


@check("detectable_content:number_placeholders")
def number_placeholders(text: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", text)) >= int(num_placeholders)


@check("detectable_content:postscript")
def postscript(text: str, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker.upper() == "P.S.":
        pattern = r"p\.\s?s\."
    elif marker.upper() == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    else:
        pattern = re.escape(marker.lower())
    return bool(re.search(r"^\s*" + pattern, text.lower(), re.MULTILINE))


@check("detectable_format:number_bullet_lists")
def number_bullet_lists(text: str, num_bullets: int) -> bool:
    bullets = re.findall(r"^\s*(?:\*[^*]|-).*$", text, re.MULTILINE)
    return len(bullets) == int(num_bullets)


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@check("detectable_format:constrained_response")
def constrained_response(text: str) -> bool:
    return any(option in text for option in CONSTRAINED_RESPONSES)


@check("detectable_format:number_highlighted_sections")
def number_highlighted_sections(text: str, num_highlights: int) -> bool:
    spans = re.findall(r"\*\*([^\n*]+)\*\*|\*([^\n*]+)\*", text)
    return sum(1 for double, single in spans if (double or single).strip()) >= int(num_highlights)


@check("detectable_format:multiple_sections")
def multiple_sections(text: str, section_spliter: str, num_sections: int) -> bool:
    parts = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", text)
    return len(parts) - 1 >= int(num_sections)


@check("detectable_format:json_format")
def json_format(text: str) -> bool:
    body = text.strip()
    body = re.sub(r"^```(?:json|Json|JSON)?", "", body)
    body = re.sub(r"```$", "", body).strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


@check("detectable_format:title")
def title(text: str) -> bool:
    return any(t.strip() for t in re.findall(r"<<([^\n]+)>>", text))


@check("combination:two_responses")
def two_responses(text: str) -> bool:
    parts = text.split("******")
    if any(not p.strip() for p in parts[1:-1]):
        return False
    answers = [p.strip() for p in parts if p.strip()]
    return len(answers) == 2 and answers[0] != answers[1]


@check("startend:start_checker")
def start_checker(text: str, starter: str) -> bool:
    return text.strip().lower().startswith(starter.strip().lower())


@check("combination:repeat_prompt")
def repeat_prompt(text: str, prompt_to_repeat: str) -> bool:
    return start_checker(text, prompt_to_repeat)


@check("startend:end_checker")
def end_checker(text: str, end_phrase: str) -> bool:
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@check("startend:quotation")
def quotation(text: str) -> bool:
    text = text.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


@check("change_case:capital_word_frequency")
def capital_word_frequency(text: str, capital_frequency: int, capital_relation: str) -> bool:
    words = re.findall(r"[\w'-]+", text)  # hyphenated words count once, as in IFEval
    return _compare(sum(1 for w in words if w.isupper()), capital_frequency, capital_relation)


@check("change_case:english_capital")
def english_capital(text: str) -> bool:
    return text.isupper() and detect_language(text) == "en"


@check("change_case:english_lowercase")
def english_lowercase(text: str) -> bool:
    return text.islower() and detect_language(text) == "en"


@check("punctuation:no_comma")
def no_comma(text: str) -> bool:
    return "," not in text


def _constraints(ground_truth: Any) -> list[tuple[str, dict]]:
    ground_truth = ground_truth_json(ground_truth, "ifeval")
    if not isinstance(ground_truth, dict) or not isinstance(ground_truth.get("instruction_id_list"), list):
        raise GroundTruthError(f"ifeval ground_truth needs 'instruction_id_list' (list), got {ground_truth!r:.200}")
    ids = ground_truth["instruction_id_list"]
    kwargs = ground_truth.get("kwargs") or [{} for _ in ids]
    if len(kwargs) != len(ids) or not ids:
        raise GroundTruthError(f"ifeval ground_truth: {len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    out = []
    for instruction_id, kw in zip(ids, kwargs):
        if instruction_id not in CHECKS:
            raise GroundTruthError(f"ifeval instruction id {instruction_id!r} is not supported; "
                                   f"known: {sorted(CHECKS)}")
        # Parquet-backed IFEval copies carry every kwarg name with null for the unused ones.
        out.append((instruction_id, {k: v for k, v in (kw or {}).items() if v is not None}))
    return out


def verify_ifeval(answer: str, ground_truth: Any, cfg: RewardsConfig) -> RewardResult:
    constraints = _constraints(ground_truth)
    text = answer.strip()
    if not text:
        return format_failure("empty answer")
    followed = []
    for instruction_id, kwargs in constraints:
        try:
            followed.append(bool(CHECKS[instruction_id](text, **kwargs)))
        except TypeError as exc:
            raise GroundTruthError(f"ifeval {instruction_id}: bad kwargs {kwargs!r:.200}: {exc}") from exc
    fraction = sum(followed) / len(followed)
    strict = float(all(followed))
    reward = strict if cfg.ifeval_strict else fraction
    return RewardResult(reward, details={"followed": [[c[0], ok] for c, ok in zip(constraints, followed)],
                                         "fraction": fraction, "all": strict})
