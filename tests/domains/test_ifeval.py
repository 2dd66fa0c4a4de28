"""Instruction following: every IFEval constraint on a response that meets it and one that
does not, and the fraction / all-or-nothing rewards."""

from __future__ import annotations

import json

import pytest

from megatron_prorl.config import RewardsConfig
from megatron_prorl.rewards import GroundTruthError, score, score_detailed
from megatron_prorl.domains.ifeval import CHECKS, split_sentences

TEN_WORDS = "one two three four five six seven eight nine ten"
ENGLISH = "the quick brown fox jumps over the lazy dog while the farmer watches from the old barn"

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An Apple and a pear.", "An apple only."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "cat and cat", "one cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badge is fine", "that is Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "zzZ", "zz"),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je voudrais un café et un croissant, s'il vous plaît.", ENGLISH),
    ("language:response_language", {"language": "zh"}, "我们今天去公园散步，天气非常好，大家都很开心。", ENGLISH),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith paid 3.50 dollars. He left!", "One. Two. Three."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "first\n***\nsecond",
     "first\n***\n\n***\nthird"),
    ("length_constraints:number_words", {"num_words": 10, "relation": "at least"}, TEN_WORDS, "too short"),
    ("length_constraints:number_words", {"num_words": 10, "relation": "less than"}, "short", TEN_WORDS),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "banana"},
     "Apples are red.\n\nBanana, yellow.", "Apples are red.\n\nCherries are too."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name] at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi. Bye."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S more", "Hi.\nP.S. bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a\n* b\n- c"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nintro\nSection 2\nbody", "Section 1\nall of it"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', '{"a": [1, 2]'),
    ("detectable_format:title", {}, "<<Ode to Joy>>\ntext", "<< >> text"),
    ("combination:two_responses", {}, "first\n******\nsecond", "same\n******\nsame"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses...", "Roses..."),
    ("startend:start_checker", {"starter": "I would say"}, "I would say yes", "Well, I would say"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\"",
     "Any other questions? Bye."),
    ("startend:quotation", {}, '"all quoted"', '"half quoted'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "BIG and STRONG well-known", "only ONE"),
    ("change_case:english_capital", {}, ENGLISH.upper(), ENGLISH),
    ("change_case:english_lowercase", {}, ENGLISH, ENGLISH.capitalize()),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
]


@pytest.mark.parametrize("instruction_id, kwargs, good, bad", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_constraint(instruction_id, kwargs, good, bad):
    gt = {"instruction_id_list": [instruction_id], "kwargs": [kwargs]}
    assert score("ifeval", good, gt) == 1.0
    assert score("ifeval", bad, gt) == 0.0


def test_every_registered_check_is_tested():
    assert {c[0] for c in CASES} == set(CHECKS)


def test_fraction_and_strict_rewards():
    gt = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase", "detectable_format:title"],
          "kwargs": [{}, {}, {}]}
    response = "<think>Reasoning, With Commas and CAPITALS <<t>></think>" + ENGLISH
    result = score_detailed("ifeval", response, gt)
    assert result.reward == pytest.approx(2 / 3)  # scored on the text after </think> only
    assert result.details["all"] == 0.0
    assert result.details["followed"] == [["punctuation:no_comma", True], ["change_case:english_lowercase", True],
                                          ["detectable_format:title", False]]
    assert score("ifeval", response, gt, cfg=RewardsConfig(ifeval_strict=True)) == 0.0
    assert score("ifeval", f"<<title>> {ENGLISH}", gt, cfg=RewardsConfig(ifeval_strict=True)) == 1.0


def test_empty_or_undetectable_answers_score_zero():
    gt = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert score_detailed("ifeval", "<think>all of it</think>  \n", gt).reason == "empty answer"
    lang = {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "en"}]}
    assert score("ifeval", "12345 !!!", lang) == 0.0  # IFEval would count this as followed


def test_ground_truth_forms():
    # HF/Parquet copies of IFEval carry every kwarg name, null where unused; JSON strings too.
    gt = {"instruction_id_list": ["length_constraints:number_words"],
          "kwargs": [{"num_words": 3, "relation": "at least", "keywords": None, "language": None}]}
    assert score("ifeval", "one two three", json.dumps(gt)) == 1.0
    with pytest.raises(GroundTruthError, match="not supported"):
        score("ifeval", "x", {"instruction_id_list": ["made:up"], "kwargs": [{}]})
    with pytest.raises(GroundTruthError, match="bad kwargs"):
        score("ifeval", "x", {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"foo": 1}]})
    with pytest.raises(GroundTruthError, match="relation"):
        score("ifeval", "x y", {"instruction_id_list": ["length_constraints:number_words"],
                                "kwargs": [{"num_words": 1, "relation": "roughly"}]})
    with pytest.raises(GroundTruthError, match="2 instruction ids but 1 kwargs"):
        score("ifeval", "x", {"instruction_id_list": ["punctuation:no_comma"] * 2, "kwargs": [{}]})


def test_sentence_splitter():
    assert split_sentences("Mr. Smith paid 3.50 dollars. Was it e.g. fair? Yes!") == [
        "Mr. Smith paid 3.50 dollars.", "Was it e.g. fair?", "Yes!"]
    assert len(split_sentences("J. R. R. Tolkien wrote it. The end.")) == 2


# Google's checker counts sentences with NLTK punkt, which ends them only at . ! ? (never at a line
# break alone) and knows abbreviations.
@pytest.mark.parametrize("text, sentences", [
    ("My Title\n\nThe first sentence. The second one.", ["My Title\n\nThe first sentence.", "The second one."]),
    ("Steps:\n\n1. Mix the flour.\n2. Bake it.", ["Steps:\n\n1. Mix the flour.", "2. Bake it."]),
    ("I moved to the U.S.A. last year. It was great.", ["I moved to the U.S.A. last year.", "It was great."]),
    ("I love the U.S.A. It is big.", ["I love the U.S.A.", "It is big."]),
    ("It ended in 2019. Then it began again!\n\nThe end", ["It ended in 2019.", "Then it began again!",
                                                            "The end"]),
])
def test_sentences_end_at_punctuation_not_at_titles_or_list_numbers(text, sentences):
    assert split_sentences(text) == sentences
    gt = {"instruction_id_list": ["length_constraints:number_sentences"],
          "kwargs": [{"num_sentences": len(sentences), "relation": "at least"}]}
    assert score("ifeval", text, gt) == 1.0
    gt["kwargs"][0]["num_sentences"] += 1
    assert score("ifeval", text, gt) == 0.0


@pytest.mark.parametrize("marker, text, followed", [
    ("P.S.", "Thanks for reading. P.S. I will call you.", True),  # mid-line, as Google's checker
    ("P.S.", "See you soon (p. s. bring snacks)", True),
    ("p.s.", "Bye. PS. no dots", False),
    ("P.P.S", "Bye. P.S. one. P.P.S two.", True),
    ("P.P.S", "Bye. P.S. one.", False),
    ("P.S.", "Mind your ps and qs.", False),
])
def test_postscript_marker_counts_anywhere(marker, text, followed):
    gt = {"instruction_id_list": ["detectable_content:postscript"], "kwargs": [{"postscript_marker": marker}]}
    assert score("ifeval", text, gt) == float(followed)


@pytest.mark.parametrize("text, capitalised", [
    ("We met in the U.S.A. today", 1),  # one word, as NLTK's tokenizer keeps it
    ("We met in the U.S.A.", 1),
    ("NASA's new rocket", 1),  # NLTK: NASA + 's
    ("BIG and STRONG well-known WELL-KNOWN", 3),  # hyphenated words are one, as in NLTK
    ("DON'T PANIC", 2),  # a contraction is one word (NLTK: DO + N'T + PANIC = 3)
    ("E.G. 3.14 A", 2),
])
def test_capitalised_words(text, capitalised):
    check = CHECKS.get("change_case:capital_word_frequency")
    assert check(text, capital_frequency=capitalised, capital_relation="exactly")
