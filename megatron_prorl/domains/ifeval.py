"""Instruction following: IFEval-style verifiable constraints, scored on the answer text.

Each constraint is a small named check in :data:`CHECKS`, keyed by IFEval's instruction id and
taking IFEval's keyword argument names, so IFEval / Llama-Nemotron style ground truths
(``{"instruction_id_list": [...], "kwargs": [{...}, ...]}``) score as they are. The reward is
the fraction of constraints met (ProRL), or all-or-nothing with ``rewards.ifeval_strict``;
both are in ``details``.

The checks follow Google's reference checkers (google-research/google-research
instruction_following_eval/: instructions.py at 3f357bd, instructions_util.py at 5b09c22,
instructions_registry.py at 1d49f2c) wherever those are right. Every remaining difference
(checkers by instruction id, without the category prefix):

| checker | Google | here | why |
|---|---|---|---|
| all | checks the whole response, an empty one too | the answer after ``</think>``, stripped; empty: 0 | (1) |
| all with a relation | "less than", "at least"; others: ValueError | also "at most", "more than", "exactly" | (2) |
| all, a kwarg missing | draws a random value (most checkers) | GroundTruthError | (3) |
| existence, frequency, forbidden_words | the keyword is a regex | a literal | (4) |
| multiple_sections | the section splitter is a regex | a literal | (4) |
| letter_frequency | a "letter" of 2+ characters: a random letter | counted as given | (3) |
| response_language | undetectable language: followed | not followed | (5) |
| response_language | the language code compared exactly | "zh" also takes zh-cn, zh-tw | (5) |
| english_capital, english_lowercase | undetectable language: followed | not followed | (5) |
| response_language, english_* | langdetect unseeded | seeded | (3) |
| number_sentences | NLTK punkt (trained statistics) | regex splitter, :func:`split_sentences` | (6) |
| nth_paragraph_first_word | paragraphs split at "\\n\\n" exactly | at blank lines, spaces allowed | (7) |
| nth_paragraph_first_word | nth of the raw split, empty parts included | nth non-empty paragraph | (7) |
| nth_paragraph_first_word | the word keeps leading ``*_#``, trailing ``*:;`` | stripped | (7) |
| postscript | "P.S." / "P.P.S" case-sensitive; others a regex | case-insensitive; others literal | (4) |
| number_highlighted_sections | ``***x***`` counts twice (``*x*``, ``**x**``) | once | (8) |
| start_checker | no such id (constrained_start is disabled) | the answer starts with it, any case | (9) |
| capital_word_frequency | NLTK word_tokenize | regex words, ``_CASED_WORD`` | (10) |

(1) The reasoning is not the answer; an empty answer follows nothing, where Google passes it on
no_comma, forbidden_words and the like. Google's evaluation also reports a "loose" accuracy over
variants of the response; the reward is the strict one. (2) More ground truths are accepted; the
two relations IFEval uses mean the same here. (3) A reward must be reproducible, and a broken
ground truth loud. (4) A keyword such as "C++" or "$5", or the marker "p.s." (the regex p.s.
matches "pose"), must mean itself. (5) Google would reward an empty or symbol-only answer;
langdetect names Chinese only with a region, so Google's "zh" never matches. (6) Needs no NLTK
data (see below). Both end sentences at ``.!?`` before whitespace; neither ends one at a line
break alone (a title, a list item), at a decimal point or after a common abbreviation. Punkt's
trained statistics decide rarer cases (an unlisted abbreviation, a number ending a sentence, a
list number followed by a word punkt thinks starts sentences), which the regex decides by rule.
(7) A separator line holding a space is still a blank line; a blank paragraph is not a
paragraph; "**Banana**" and "Banana:" start with the word banana. (8) Bold italics is one
highlighted span. (9) The id is an addition here, modelled on Google's disabled
ConstrainedStartChecker, which matched its regex at the start of any line, case-sensitively; the
instruction asks the response to start with the phrase, and case is ignored as in Google's
combination:repeat_prompt, which is this check under another name. (10) Needs no NLTK data; both
keep hyphenated words and acronyms ("U.S.A.") whole and count "NASA's" as capitalised; here a
contraction ("DON'T", "I'M") is one word where NLTK counts two capitalised tokens, and a word
joined by a symbol ("AND/OR", "E=MC2") is two where NLTK keeps one token.

Why the checkers are written here rather than imported: lm-evaluation-harness ships Google's
code (lm_eval/tasks/ifeval/), but its instructions_util.py calls ``download_nltk_resources()``
on import, which runs ``nltk.download("punkt")`` when the data is missing (read at commits
0d2cf3b and d49b672), a network fetch that offline clusters cannot make. Google's own module is
not published as a package and needs the same NLTK data (``nltk.data.load`` of punkt's
english.pickle for sentences, ``nltk.word_tokenize`` for capitalised words). Written here, the
checks need only langdetect.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from megatron_prorl.domains import Domain, PrepareSource
from megatron_prorl.domains.result import GroundTruthError, RewardResult, format_failure, ground_truth_json
from megatron_prorl.registry import Registry

if TYPE_CHECKING:
    from megatron_prorl.config import RewardsConfig

# IFEval instruction id -> check(text, **kwargs) -> bool. More can be registered
# (``CHECKS.register("my:constraint", fn)``) and are then valid in ground truths.
CHECKS: Registry[Callable[..., bool]] = Registry("IFEval instruction id")
check = CHECKS.register  # the decorator: @check("punctuation:no_comma")


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


# Letters with full stops ("U.S.A."): no sentence ends inside; the last stop ends one only before
# a capitalised word ("... the U.S.A. It was").
_ACRONYM = re.compile(r"\b((?:[A-Za-z]\.){2,})(?!\s+[A-Z])")
_LIST_NUMBER = re.compile(r"^(\s*\d+)\.(?=\s)", re.MULTILINE)  # "1. First step"


def split_sentences(text: str) -> list[str]:
    """Sentences end at ``.``, ``!`` or ``?`` (and any closing quotes or brackets) before
    whitespace, as with NLTK's punkt; a line break or blank line alone ends none (a title, a
    list item). Not ends: abbreviations, decimals, initials, acronyms, list numbers."""
    protected = _ACRONYM.sub(lambda m: m.group(1).replace(".", "\0"), text)
    protected = _ABBREV.sub(lambda m: m.group(1).replace(".", "\0") + "\0", protected)
    protected = re.sub(r"(\d)\.(\d)", "\\1\0\\2", protected)  # decimals
    protected = re.sub(r"(?<![\w\0])([A-Z])\.(?=\s+[A-Z])", "\\1\0", protected)  # initials: "J. Smith"
    protected = _LIST_NUMBER.sub("\\1\0", protected)
    parts = re.split(r"(?<=[.!?])[\"')\]]*\s+", protected)
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
    return bool(re.search(pattern, text.lower()))  # anywhere, as IFEval: "... and p.s. see you"


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


# Hyphenated words ("WELL-KNOWN") and acronyms ("U.S.A.") are one word, as with IFEval's NLTK
# tokenizer; so is a contraction ("DON'T"), which NLTK splits into two capitalised words.
_CASED_WORD = re.compile(r"[\w'’-]+(?:\.[\w'’-]+)*")
_POSSESSIVE = re.compile(r"['’]s$")  # "NASA's" is a capitalised word, as for NLTK ("NASA" + "'s")


@check("change_case:capital_word_frequency")
def capital_word_frequency(text: str, capital_frequency: int, capital_relation: str) -> bool:
    count = sum(1 for w in _CASED_WORD.findall(text) if _POSSESSIVE.sub("", w).isupper())
    return _compare(count, capital_frequency, capital_relation)


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
                                   f"known: {list(CHECKS.names())}")
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
            followed.append(bool(CHECKS.get(instruction_id)(text, **kwargs)))
        except TypeError as exc:
            raise GroundTruthError(f"ifeval {instruction_id}: bad kwargs {kwargs!r:.200}: {exc}") from exc
    fraction = sum(followed) / len(followed)
    strict = float(all(followed))
    reward = strict if cfg.ifeval_strict else fraction
    return RewardResult(reward, details={"followed": [[c[0], ok] for c, ok in zip(constraints, followed)],
                                         "fraction": fraction, "all": strict})


def check_ground_truth(gt: Any) -> None:
    if not isinstance(gt, dict):
        raise ValueError(f"ifeval ground_truth must be a dict, got {type(gt).__name__}")
    ids, kwargs = gt.get("instruction_id_list"), gt.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise ValueError("instruction_id_list must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise ValueError("kwargs must be a list of dicts, one per instruction id")


def warm(cfg) -> None:
    detect_language("warm up the language profiles")


# IFEval prompts state their constraints themselves: no instruction is added. Scored on the text
# after </think>; the headline is the mean fraction of constraints followed (the paper's).
DOMAIN = Domain(
    "ifeval", verify=verify_ifeval, check_ground_truth=check_ground_truth, warm=warm,
    prepare=PrepareSource("hf:nvidia/Llama-Nemotron-Post-Training-Dataset?name=RL&split=instruction_following",
                          "llama_nemotron_if"),
    example="Write a haiku about autumn. Do not use any commas in your response.",
    title="Instruction following", order=3, headline="mean reward", structured_ground_truth=True)
