"""The Creativity Index on generated corpora: planted overlaps, exactness against brute force
(one shard and many), the word splitting, index reuse, and the command's outputs."""

from __future__ import annotations

import gzip
import json
import random
import re

import numpy as np
import pytest

from megatron_prorl.eval import creativity as C
from megatron_prorl.eval.cli import main as eval_main


def _words(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    return [rng.choice(vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A corpus of random text over a 2,000-word vocabulary (txt and jsonl.gz documents), a
    response copied from it, an unseen one (words outside the vocabulary), a half-copied one."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(2000)]
    root = tmp_path_factory.mktemp("creativity")
    corpus = root / "corpus"
    corpus.mkdir()
    docs = [" ".join(_words(rng, vocab, 300)) for _ in range(40)]
    for i, doc in enumerate(docs[:30]):
        (corpus / f"doc{i}.txt").write_text(doc + "\n")
    with gzip.open(corpus / "rest.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[30:]))
    copied = " ".join(docs[35].split()[100:160])  # from the jsonl.gz part
    unseen = " ".join(f"new{i}" for i in _words(rng, [str(j) for j in range(500)], 60))
    half = " ".join(docs[3].split()[:30] + [rng.choice(vocab) for _ in range(30)])
    responses = root / "responses.jsonl"
    responses.write_text("".join(json.dumps({"id": k, "text": t}) + "\n"
                                 for k, t in (("copied", copied), ("unseen", unseen), ("half", half))))
    return corpus, responses, docs


def test_planted_overlaps(planted, tmp_path):
    corpus, responses, _ = planted
    result = C.run_creativity(corpus, [responses], tmp_path / "out", index_dir=tmp_path / "idx", progress=False)
    copied, unseen, half = result["creativity_index"]["responses"]
    assert copied == 0.0
    assert unseen == 1.0
    # 30 copied words then 30 random vocabulary words (random 5-grams of a 2,000-word vocabulary
    # are never in a 12k-word corpus): the first half is covered at every L
    assert half == pytest.approx(0.5, abs=0.02)
    assert result["mean"]["responses"] == pytest.approx((copied + unseen + half) / 3)
    written = json.loads((tmp_path / "out" / "creativity.json").read_text())
    assert written["creativity_index"]["responses"] == [copied, unseen, half]
    assert written["ids"]["responses"] == ["copied", "unseen", "half"]
    assert "| responses | 3 |" in (tmp_path / "out" / "creativity.md").read_text()


def _brute_force_matches(doc_hashes, query: np.ndarray, max_len: int) -> list[int]:
    grams = {L: {tuple(d[i:i + L]) for d in doc_hashes for i in range(len(d) - L + 1)} for L in range(1, max_len + 1)}
    q = query.tolist()
    return [max([L for L in range(1, max_len + 1) if i + L <= len(q) and tuple(q[i:i + L]) in grams[L]], default=0)
            for i in range(len(q))]


@pytest.mark.parametrize("shard_words", [1 << 20, 97])
def test_match_lengths_equal_brute_force(tmp_path, shard_words):
    """A tiny vocabulary makes long partial matches common; many shards test the overlaps."""
    rng = random.Random(1)
    vocab = ["a", "b", "c", "ab", "ba", ".", ","]
    docs = [" ".join(_words(rng, vocab, rng.randint(3, 120))) for _ in range(30)]
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i, d in enumerate(docs):
        (corpus / f"{i}.txt").write_text(d)
    index = C.build_index(corpus, tmp_path / "idx", depth=16, shard_words=shard_words, progress=False)
    assert (len(index.shards) > 10) == (shard_words < 1000)
    doc_hashes = [C.text_hashes(d).tolist() for d in docs]
    for _ in range(40):
        query = C.text_hashes(" ".join(_words(rng, vocab + ["zz"], rng.randint(1, 40))))
        assert index.match_lengths(query, 12).tolist() == _brute_force_matches(doc_hashes, query, 12)


def test_word_splitting():
    text = "Hello, world!  naïve \\boxed{42} x_y\tend."
    expected = re.findall(rb"[A-Za-z0-9\x80-\xff]+|[!-/:-@\[-`{-~]", text.encode())
    hashes = C.text_hashes(text)
    assert len(hashes) == len(expected) == 15
    assert [C.text_hashes(t.decode())[0] for t in expected] == hashes.tolist()
    assert C.text_hashes("Hello")[0] != C.text_hashes("hello")[0]  # verbatim: case is kept
    assert (hashes % 2 == 1).all()  # never 0, the document separator


def test_uniqueness_definition():
    # per-word match lengths of a 10-word response: a 6-word span copied at 0, 3 words at 7
    match = np.array([6, 5, 4, 3, 2, 1, 0, 3, 2, 1])
    u = C.uniqueness(match, [3, 5, 6, 7])
    assert u == {3: pytest.approx(0.1), 5: pytest.approx(0.4), 6: pytest.approx(0.4), 7: 1.0}


def test_index_is_reused_and_rebuilt(planted, tmp_path):
    corpus, responses, _ = planted
    index = C.open_index(corpus, tmp_path / "idx", 12, progress=False)
    stamp = (tmp_path / "idx" / C.MANIFEST).stat().st_mtime_ns
    assert index.depth == 16 and index.stats.words == 40 * 300 and index.stats.files == 31
    C.open_index(corpus, tmp_path / "idx", 12, progress=False)
    assert (tmp_path / "idx" / C.MANIFEST).stat().st_mtime_ns == stamp  # reused
    with pytest.raises(ValueError, match="max n-gram 20 > the index's depth 16"):
        index.match_lengths(C.text_hashes("a b"), 20)
    C.open_index(corpus, tmp_path / "idx", 20, progress=False)  # deeper: rebuilt
    assert C.CorpusIndex(tmp_path / "idx").depth == 32


def test_command_line_and_bad_inputs(planted, tmp_path, capsys):
    corpus, responses, _ = planted
    out = tmp_path / "out"
    code = eval_main(["creativity", "--corpus", str(corpus), "--responses", str(responses), str(responses),
                      "--out", str(out), "--index", str(tmp_path / "idx"), "--quiet", "--max-ngram", "8"])
    assert code == 0
    result = json.loads((out / "creativity.json").read_text())
    assert set(result["mean"]) == {"responses", "responses#2"}  # side by side
    assert result["max_ngram"] == 8 and "creativity index" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.bin").write_bytes(b"\0\1")
    for argv, message in (
            (["--corpus", str(empty), "--responses", str(responses)], "empty corpus"),
            (["--corpus", str(tmp_path / "nope"), "--responses", str(responses)], "no such directory"),
            (["--corpus", str(corpus), "--responses", str(tmp_path / "none.jsonl")], "no such file"),
            (["--corpus", str(corpus), "--responses", str(responses), "--min-ngram", "9", "--max-ngram", "5"],
             "need 1 <= min <= max")):
        assert eval_main(["creativity", *argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("prorl eval: error:") and message in err and "\n" not in err
    (empty / "blank.txt").write_text("  \n\t ")
    with pytest.raises(ValueError, match="empty corpus"):
        C.build_index(empty, tmp_path / "idx2", progress=False)
