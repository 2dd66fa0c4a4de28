"""Converters on fixture files in each public format: good rows come out in the schema, bad
rows are counted and named in warnings, unusable rows are counted by reason."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import warnings
import zlib

import pytest

from megatron_prorl.config import DataSourceConfig
from megatron_prorl.data import BadRowWarning, load_source
from megatron_prorl.data.code_tests import decode_lcb_private
from megatron_prorl.data.formats import final_answer
from megatron_prorl.errors import DataError
from megatron_prorl.data.schema import BadRow


def load(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = load_source(DataSourceConfig(path=str(path), **kw))
    return source, [str(w.message) for w in caught if issubclass(w.category, BadRowWarning)]


# (format, file, rows kept, bad rows with their locations, dropped reasons)
CASES = [
    ("deepscaler", "deepscaler.json", 4, ["row 4", "row 5", "row 6"], {}),
    ("eurus2", "eurus2.parquet", 4, ["row 4", "row 5", "row 6"], {}),
    ("scp116k", "scp116k.jsonl", 2, ["line 4", "line 6"], {"no checkable final answer": 2}),
    ("llama_nemotron_if", "llama_nemotron_if.jsonl", 4, ["line 5", "line 6"], {}),
    ("taco", "taco.jsonl", 3, ["line 4", "line 5"], {}),
    ("livecodebench", "livecodebench.jsonl", 2, ["line 3", "line 4"], {}),
    ("prorl", "prorl.jsonl", 5, ["line 4", "line 5", "line 8", "line 9"], {}),
]


@pytest.mark.parametrize("fmt,name,kept,bad,dropped", CASES, ids=[c[0] for c in CASES])
def test_fixture_counts_and_warnings(fixtures, fmt, name, kept, bad, dropped):
    source, messages = load(fixtures / name, format=fmt)
    assert len(source.rows) == kept
    assert source.bad == len(bad)
    assert dict(source.dropped) == dropped
    # One warning per bad row, naming the file and the row.
    assert [re.search(r"(row|line) \d+", m).group(0) for m in messages] == bad
    assert all(m.startswith(str(fixtures / name)) for m in messages)
    assert len({r.id for r in source.rows}) == kept  # ids present and unique


def test_deepscaler(fixtures):
    rows = load(fixtures / "deepscaler.json", format="deepscaler")[0].rows
    assert [(r.domain, r.ground_truth) for r in rows] == [
        ("math", "55"), ("math", "4"), ("math", "\\frac{5}{6}"), ("math", "8")]  # numeric answer -> "8"
    assert rows[0].prompt == "What is the sum of the first 10 positive integers?"


def test_eurus2_strips_its_instructions_and_parses_tests(fixtures):
    source, messages = load(fixtures / "eurus2.parquet", format="eurus2")
    math, _, stdin, call = source.rows
    assert math.prompt == "Find the remainder when $2^{10}$ is divided by 7."  # no system prompt, no suffix
    assert (math.domain, math.ground_truth, math.id, math.source) == ("math", "2", "eurus2:train:0",
                                                                      "eurus2:numina_olympiads")
    assert stdin.prompt == "Read two integers and print their sum."
    assert stdin.ground_truth == {"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}
    assert call.ground_truth == {"fn_name": "minFlips", "inputs": [["0101"], ["1111"]], "outputs": [[0], [2]]}
    assert "not valid JSON" in messages[0] and "unknown ability 'chemistry'" in messages[1]


def test_the_parquet_fixture_carries_newer_datasets_metadata(fixtures):
    # Written by datasets >= 4 ("List" features), which datasets 3.x cannot parse: the tests above
    # read it in the image lane (datasets 3.1.0) too, so the reader must not depend on it.
    import pyarrow.parquet as pq

    metadata = json.loads(pq.read_schema(fixtures / "eurus2.parquet").metadata[b"huggingface"])
    assert metadata["info"]["features"]["prompt"]["_type"] == "List"


def test_eurus2_domain_filter(fixtures):
    source, _ = load(fixtures / "eurus2.parquet", format="eurus2", domain="code")
    assert [r.domain for r in source.rows] == ["code", "code"]
    assert dict(source.dropped) == {"domain math, source keeps code": 2}


def test_scp116k_answer_choice(fixtures):
    rows = load(fixtures / "scp116k.jsonl", format="scp116k")[0].rows
    # Reference solution's own \boxed{}; then a model solution flagged as agreeing (not the disagreeing one).
    assert [r.ground_truth for r in rows] == ["9\\,\\text{J}", "2 \\text{ mol}"]
    assert all(r.domain == "stem" for r in rows) and rows[0].extra == {"discipline": "Physics"}


def test_final_answer_balances_braces_and_keeps_every_part():
    assert final_answer("so \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert final_answer("\\fbox{x^{2}}") == "x^{2}"
    assert final_answer("\\boxed{1} papers and \\boxed{2} bins") == "\\boxed{1}, \\boxed{2}"
    assert final_answer("first \\boxed{7}. A long derivation follows, far longer than seventy characters, "
                        "before the result \\boxed{9}") == "9"
    assert final_answer("\\boxed{unclosed") is None and final_answer("none") is None


def test_instruction_following_kwargs_cleaned(fixtures):
    rows = load(fixtures / "llama_nemotron_if.jsonl", format="llama_nemotron_if")[0].rows
    assert rows[0].ground_truth == {
        "instruction_id_list": ["length_constraints:number_sentences", "detectable_content:postscript"],
        "kwargs": [{"num_sentences": 2, "relation": "less than"}, {"postscript_marker": "P.S."}]}
    assert rows[0].prompt.startswith("Explain the plot of Cinderella")
    assert (rows[2].id, rows[2].ground_truth["kwargs"]) == ("1000", [{}, {"relation": "at least", "num_words": 300}])
    assert (rows[3].id, rows[3].ground_truth["kwargs"]) == ("8654", [{}, {}])  # null kwargs -> {}


def test_taco(fixtures):
    stdin, call, lines = load(fixtures / "taco.jsonl", format="taco")[0].rows
    assert stdin.ground_truth == {"inputs": ["3\n", "10\n"], "outputs": ["6\n", "55\n"], "time_limit_s": 2.0}
    assert call.ground_truth == {"fn_name": "count_vowels", "inputs": [["hello"], ["sky"]], "outputs": [[2], [0]]}
    assert call.prompt.endswith("```python\ndef count_vowels(s):\n```")  # starter code shown
    assert lines.ground_truth == {"inputs": ["a\nb"], "outputs": ["b\na"], "time_limit_s": 1.5}
    assert stdin.source == "taco:codeforces"


def test_livecodebench(fixtures):
    stdin, call = load(fixtures / "livecodebench.jsonl", format="livecodebench")[0].rows
    assert stdin.ground_truth == {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}  # public + private
    assert (stdin.id, stdin.source) == ("abc300_a", "livecodebench:atcoder")
    # Compressed private tests decoded; one JSON value per input line becomes the call's arguments.
    assert call.ground_truth == {"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 3], 6]],
                                 "outputs": [[0, 1], [0, 1]]}
    assert "class Solution:" in call.prompt


def test_livecodebench_refuses_pickled_code():
    hostile = base64.b64encode(zlib.compress(pickle.dumps(os.getcwd))).decode()  # a global: would call code
    with pytest.raises(BadRow, match="refusing to load"):
        decode_lcb_private(hostile)


def test_prorl_mixed_domains(fixtures):
    rows = load(fixtures / "prorl.jsonl")[0].rows
    assert [r.domain for r in rows] == ["math", "stem", "code", "logic", "ifeval"]
    assert rows[2].ground_truth == {"inputs": ["3\n", "-4\n"], "outputs": ["9\n", "16\n"], "time_limit_s": 2.0}


def test_prorl_logic_entry_is_the_generators_own(fixtures):
    import reasoning_gym

    logic = next(r for r in load(fixtures / "prorl.jsonl")[0].rows if r.domain == "logic")
    original = reasoning_gym.create_dataset("graph_color", seed=7, size=1)[0]
    assert logic.ground_truth == {"task": "graph_color", "entry": original}  # tuples and int keys restored
    coloring = {str(k): v for k, v in original["metadata"]["possible_answer"].items()}
    score = reasoning_gym.get_score_answer_fn("graph_color")(json.dumps(coloring), logic.ground_truth["entry"])
    assert score == 1.0


def test_all_bad_file_is_an_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "no answer"}\n{"answer": "1"}\nnot json\n')
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load(path, format="deepscaler")


def test_all_rows_unusable_is_an_error(fixtures, tmp_path):
    path = tmp_path / "scp.jsonl"
    path.write_text(json.dumps({"problem": "Why?", "matched_solution": "Because."}) + "\n")
    with pytest.raises(ValueError, match="no usable rows.*no checkable final answer"):
        load(path, format="scp116k")


def test_bad_row_warnings_are_capped(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{i}"}) + "\n" for i in range(15))
                    + json.dumps({"problem": "ok", "answer": "1"}) + "\n")
    source, messages = load(path, format="deepscaler")
    assert (len(source.rows), source.bad) == (1, 15)
    assert len(messages) == 11 and "15 bad rows skipped in all (5 not shown)" in messages[-1]


def test_source_errors(fixtures, tmp_path):
    with pytest.raises(ValueError, match="taco.jsonl: unknown data format 'nope'; known: .*deepscaler"):
        load(fixtures / "taco.jsonl", format="nope")
    with pytest.raises(ValueError, match="gives math rows, but the source's domain is 'code'"):
        load(fixtures / "deepscaler.json", format="deepscaler", domain="code")
    with pytest.raises(DataError, match="data file not found: .*missing.jsonl"):
        load(tmp_path / "missing.jsonl")
    (tmp_path / "data.tsv").write_text("a\tb\n")
    with pytest.raises(ValueError, match="unsupported data file type '.tsv'"):
        load(tmp_path / "data.tsv")
