"""The Creativity Index (Lu et al. 2024, "AI as Humanity's Salieri", arXiv 2410.04265) of
responses against a local reference corpus, with the exact-match DJ Search coverage.

What is computed, exactly:

- Words: a response and the corpus are split the same way, on UTF-8 bytes: a word is a maximal
  run of ASCII letters, digits and non-ASCII bytes (so accented and non-Latin words stay whole),
  each other printable ASCII character (punctuation, ``\\``, ``{``...) is a word of its own,
  whitespace and control characters separate words. Case is kept (matches are verbatim). This
  stands in for DJ Search's ``nltk`` casual tokenizer after ``unidecode``
  (``cauchy221/creativity_index``, ``DJ_search_exact.py``), without either dependency.
- L-coverage of a response: the share of its words inside at least one span of L consecutive
  words that occurs verbatim in one document of the corpus. Spans of L or more words found
  verbatim cover exactly the same words (every sub-span of a found span is found), so this is
  DJ Search's exact coverage with minimum n-gram L; DJ Search's greedy two-pointer walk and
  this matching-statistics computation mark the same words.
- Creativity Index: the paper sums L-uniqueness (1 - L-coverage) over L in [min_ngram,
  max_ngram] (5..12 in the public re-implementation). ``creativity_index`` here is that sum
  divided by the number of L values, so it lies in [0, 1] (0: every word inside a copied
  5-gram, 1: no span of 5 words found); ``creativity_index_sum`` is the paper's unnormalised
  sum. A response with fewer than L words has L-coverage 0; one with no words has no index.
- Not implemented: DJ Search's near-verbatim (earth mover) variant.

The index: the corpus (a directory of ``.txt`` files, each one document, and ``.jsonl`` /
``.jsonl.gz`` files whose lines hold a ``text`` field, each one document; a NUL byte also ends a
document) is split into shards of ``shard_words`` words (consecutive shards overlap by
``depth - 1`` words, so no span is lost at a cut). Per shard, words become ids (the shard's
sorted vocabulary of 64-bit word hashes), and its word positions are sorted by their next
``depth`` words (a suffix array sorted to that depth, by prefix doubling in NumPy,
Larsson-Sadakane style, re-sorting only the groups that are still tied). Shards are saved as
``.npy`` files and memory-mapped for queries, so building needs memory for one shard only and
querying little more than the page cache. A query finds, for every word of a response, the
longest corpus match (capped at ``max_ngram`` words) starting there by a vectorised binary
search over each shard's range of suffixes that start with that word.

No suffix-array library on PyPI fitted (read: pydivsufsort 0.0.20 ``divsufsort.py``,
infini-gram 2.6.0 ``indexing.py``): pydivsufsort sorts bytes, and an integer alphabet goes
through a byte string 4x longer with a suffix array of that length; infini-gram indexes the ids
of an LM tokenizer loaded from the Hugging Face hub (gpt2, llama, olmo), or raw bytes, where
word spans would need a byte-exact detokenization. DJ Search itself was read in
``cauchy221/creativity_index`` ``DJ_search_exact.py`` (commit 58e9945).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from megatron_prorl.runtime.run_lock import check_output_dir, make_output_dir

INDEX_VERSION = 1
MANIFEST = "manifest.json"
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
BLOCK_BYTES = 4 << 20
DEFAULT_SHARD_WORDS = 1 << 25
NOMATCH = np.uint32(0xFFFFFFFF)  # a query word absent from a shard

_SPACE, _WORD, _PUNCT, _DOC = 0, 1, 2, 3
_CLASS = np.zeros(256, np.uint8)
for _b in range(256):
    if _b >= 0x80 or chr(_b).isalnum():
        _CLASS[_b] = _WORD
    elif 33 <= _b <= 126:
        _CLASS[_b] = _PUNCT
_CLASS[0] = _DOC

_P = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible modulo 2**64
_PINV = np.uint64(pow(int(_P), -1, 1 << 64))
_U = np.uint64


class _Powers:
    """P**i and P**-i modulo 2**64 for i < size (grown on demand)."""

    def __init__(self):
        self.fwd = self.inv = np.ones(1, np.uint64)

    def ensure(self, size: int) -> None:
        if len(self.fwd) >= size:
            return
        size = max(size, BLOCK_BYTES + 1)  # texts are hashed in blocks of at most this
        with np.errstate(over="ignore"):
            self.fwd = np.multiply.accumulate(np.concatenate([[_U(1)], np.full(size - 1, _P)]))
            self.inv = np.multiply.accumulate(np.concatenate([[_U(1)], np.full(size - 1, _PINV)]))


_POWERS = _Powers()


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial hash over all 64 bits."""
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


def block_hashes(data: np.ndarray) -> np.ndarray:
    """64-bit hashes of the words of a byte block (uint8), in order; 0 marks a document end.
    Word hashes are odd, so never 0."""
    if data.size == 0:
        return np.zeros(0, np.uint64)
    cls = _CLASS[data]
    word = cls == _WORD
    prev = np.concatenate([[False], word[:-1]])
    nxt = np.concatenate([word[1:], [False]])
    single = np.flatnonzero((cls == _PUNCT) | (cls == _DOC))
    starts = np.concatenate([np.flatnonzero(word & ~prev), single])
    ends = np.concatenate([np.flatnonzero(word & ~nxt) + 1, single + 1])
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    _POWERS.ensure(data.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(data.size + 1, np.uint64)
        np.cumsum(data.astype(np.uint64) * _POWERS.fwd[:data.size], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * _POWERS.inv[starts]
        h = _mix(h ^ (ends - starts).astype(np.uint64) * _U(0xD6E8FEB86659FD93)) | _U(1)
    h[cls[starts] == _DOC] = 0
    return h


def byte_hashes(data: np.ndarray) -> np.ndarray:
    """Word hashes of a byte array of any length (hashed in blocks cut between words)."""
    return np.concatenate([block_hashes(b) for b in _split_blocks(data)] or [np.zeros(0, np.uint64)])


def text_hashes(text: str) -> np.ndarray:
    """Word hashes of one text (NUL characters dropped: they would end a 'document')."""
    return byte_hashes(np.frombuffer(text.replace("\0", " ").encode("utf-8"), np.uint8))


def _split_blocks(data: np.ndarray) -> Iterator[np.ndarray]:
    """Cut a byte array into blocks of about BLOCK_BYTES at word boundaries."""
    start = 0
    while data.size - start > BLOCK_BYTES:
        cut = _last_boundary(data[start:start + BLOCK_BYTES])
        yield data[start:start + cut]
        start += cut
    if data.size > start:
        yield data[start:]


def _last_boundary(block: np.ndarray) -> int:
    """Length of the longest prefix of ``block`` that ends between two words."""
    not_word = np.flatnonzero(_CLASS[block] != _WORD)
    return int(not_word[-1]) + 1 if not_word.size else len(block)


# ---------------------------------------------------------------------------------- corpus files
def corpus_files(corpus: Path) -> list[Path]:
    if not corpus.is_dir():
        raise FileNotFoundError(f"--corpus {corpus}: no such directory")
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (p.name.endswith(TEXT_SUFFIXES) or p.name.endswith(JSONL_SUFFIXES)))
    if not files:
        raise ValueError(f"--corpus {corpus}: empty corpus (no {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files)")
    return files


def _documents_blocks(files: Sequence[Path], on_bytes) -> Iterator[np.ndarray]:
    """Byte blocks of the whole corpus, each ending at a word boundary, NUL after each document."""
    pending: list[bytes] = []
    size = 0
    for path in files:
        if path.name.endswith(JSONL_SUFFIXES):
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}: line {lineno} is not a JSON object with a 'text' field") from None
                    raw = text.encode("utf-8", errors="replace") + b"\0"
                    on_bytes(len(line))
                    pending.append(raw)
                    size += len(raw)
                    if size >= BLOCK_BYTES:
                        yield np.frombuffer(b"".join(pending), np.uint8)
                        pending, size = [], 0
            continue
        with open(path, "rb") as f:
            carry = b""
            while chunk := f.read(BLOCK_BYTES):
                on_bytes(len(chunk))
                data = np.frombuffer(carry + chunk, np.uint8)
                cut = _last_boundary(data)
                carry = data[cut:].tobytes()
                pending.append(data[:cut].tobytes())
                size += cut
                if size >= BLOCK_BYTES:
                    yield np.frombuffer(b"".join(pending), np.uint8)
                    pending, size = [], 0
            pending.append(carry + b"\0")
            size += len(carry) + 1
    if pending:
        yield np.frombuffer(b"".join(pending), np.uint8)


# ---------------------------------------------------------------------------------- one shard
def sort_shard(hashes: np.ndarray, depth: int) -> dict[str, np.ndarray]:
    """The arrays of one shard: ``tokens`` (word ids, padded with ``depth`` separators), ``sa``
    (positions sorted by their next ``depth`` words), ``vocab`` (sorted word hashes; id = index,
    0 = the document separator) and ``word_start`` (the SA range of each first word)."""
    n = len(hashes)
    if n >= 0xFFFFFFFF - depth:
        raise ValueError(f"shard of {n} words: at most {0xFFFFFFFF - depth - 1}")
    order = np.argsort(hashes)
    sorted_h = hashes[order]
    new = np.empty(n, bool)
    new[0] = True
    np.not_equal(sorted_h[1:], sorted_h[:-1], out=new[1:])
    vocab = sorted_h[new]
    del sorted_h
    shift = int(vocab[0] != 0)  # id 0 is the separator, present or not
    vocab = np.concatenate([np.zeros(shift, np.uint64), vocab])
    tokens = np.zeros(n + depth, np.uint32)
    tokens[order] = np.cumsum(new, dtype=np.uint32) - (1 - shift)
    sa = order.astype(np.uint32)
    del order
    rank = np.zeros(n + depth, np.uint32)  # 1 + the SA slot where a position's group starts
    rank[sa] = np.maximum.accumulate(np.where(new, np.arange(n, dtype=np.uint32), 0)) + 1
    word_start = np.concatenate([np.zeros(shift, np.int64), np.flatnonzero(new), [n]]).astype(np.uint32)
    offset = 1
    while offset < depth:  # each round doubles the sorted depth, re-sorting tied groups only
        tied = np.flatnonzero(~(new & np.append(new[1:], True))).astype(np.uint32)
        if tied.size == 0:
            break
        pos = sa[tied]
        key = rank[pos].astype(np.uint64) << _U(32)
        key |= rank[pos + offset]
        o = np.argsort(key)
        del key
        pos = pos[o]
        del o
        sa[tied] = pos
        high, low = rank[pos], rank[pos + offset]
        boundary = np.empty(tied.size, bool)
        boundary[0] = True
        boundary[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
        del high, low
        rank[pos] = np.maximum.accumulate(np.where(boundary, tied, 0)) + 1
        new[tied] = boundary
        offset *= 2
    return {"tokens": tokens, "sa": sa, "vocab": vocab, "word_start": word_start}


class Shard:
    def __init__(self, directory: Path):
        self.arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r")
                       for name in ("tokens", "sa", "vocab", "word_start")}

    def ids(self, hashes: np.ndarray) -> np.ndarray:
        vocab = self.arrays["vocab"]
        idx = np.searchsorted(vocab, hashes)
        found = (idx < len(vocab)) & (hashes != 0)
        found[found] = vocab[idx[found]] == hashes[found]
        return np.where(found, idx, NOMATCH).astype(np.uint32)

    def match_lengths(self, hashes: np.ndarray, max_len: int) -> np.ndarray:
        """For each position of ``hashes`` (0 = a boundary that nothing matches), the longest
        run of words from there found in this shard, at most ``max_len``."""
        tokens, sa, word_start = self.arrays["tokens"], self.arrays["sa"], self.arrays["word_start"]
        q = self.ids(hashes)
        out = np.zeros(len(q), np.int64)
        starts = np.flatnonzero(q != NOMATCH)
        out[starts] = 1
        if starts.size == 0 or max_len == 1:
            return out
        padded = np.concatenate([q, np.full(max_len, NOMATCH, np.uint32)])
        rest = np.lib.stride_tricks.sliding_window_view(padded, max_len)[starts, 1:]
        first = q[starts].astype(np.int64)
        low, high = word_start[first].astype(np.int64), word_start[first + 1].astype(np.int64)
        lo, hi = low.copy(), high.copy()
        offsets = np.arange(1, max_len)
        while (active := np.flatnonzero(lo < hi)).size:  # lower bound of the query's window
            mid = (lo[active] + hi[active]) // 2
            text = tokens[sa[mid].astype(np.int64)[:, None] + offsets]
            want = rest[active]
            differ = text != want
            at = differ.argmax(1)
            rows = np.arange(active.size)
            below = differ.any(1) & (text[rows, at] < want[rows, at])
            lo[active] = np.where(below, mid + 1, lo[active])
            hi[active] = np.where(below, hi[active], mid)
        best = np.ones(starts.size, np.int64)  # the first word matched
        for cand in (lo - 1, lo):  # the longest match is a neighbour of the insertion point
            ok = np.flatnonzero((cand >= low) & (cand < high))
            if ok.size:
                same = tokens[sa[cand[ok]].astype(np.int64)[:, None] + offsets] == rest[ok]
                run = np.where(same.all(1), max_len - 1, same.argmin(1))
                best[ok] = np.maximum(best[ok], 1 + run)
        out[starts] = best
        return out


# ---------------------------------------------------------------------------------- the index
@dataclass
class IndexStats:
    files: int
    bytes: int
    words: int
    shards: int
    seconds: float


class CorpusIndex:
    """A built index (see the module docstring); open with :func:`open_index`."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.manifest = json.loads((self.dir / MANIFEST).read_text())
        self.depth = self.manifest["depth"]
        self.shards = [Shard(self.dir / s["dir"]) for s in self.manifest["shards"]]

    @property
    def stats(self) -> IndexStats:
        m = self.manifest
        return IndexStats(len(m["files"]), m["bytes"], m["words"], len(m["shards"]), m["seconds"])

    def match_lengths(self, hashes: np.ndarray, max_len: int) -> np.ndarray:
        if max_len > self.depth:
            raise ValueError(f"max n-gram {max_len} > the index's depth {self.depth}: rebuild it (--rebuild)")
        best = np.zeros(len(hashes), np.int64)
        for shard in self.shards:
            np.maximum(best, shard.match_lengths(hashes, max_len), out=best)
        return best


def _listing(corpus: Path, files: Sequence[Path]) -> list:
    return [[str(p.relative_to(corpus)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def build_index(corpus: str | Path, index_dir: str | Path, depth: int = 16,
                shard_words: int = DEFAULT_SHARD_WORDS, progress: bool = True) -> CorpusIndex:
    """Index the text files under ``corpus`` into ``index_dir`` (replaced if present)."""
    from tqdm import tqdm

    corpus, index_dir = Path(corpus), Path(index_dir)
    if shard_words < 2 * depth:
        raise ValueError(f"--shard-words {shard_words}: must be at least {2 * depth}")
    files = corpus_files(corpus)
    total = sum(p.stat().st_size for p in files)
    start = time.perf_counter()
    tmp = index_dir.with_name(index_dir.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards, pending, pending_words, words = [], [], 0, 0

    def save(part: np.ndarray) -> None:
        name = f"shard_{len(shards):05d}"
        (tmp / name).mkdir()
        for key, array in sort_shard(part, depth).items():
            np.save(tmp / name / f"{key}.npy", array)
        shards.append({"dir": name, "words": int(len(part))})

    def flush(final: bool) -> None:
        # A cut keeps the last depth - 1 words for the next shard: every span of up to depth
        # words then lies whole in one shard.
        nonlocal pending, pending_words
        buf = np.concatenate(pending)
        pending = []
        while len(buf) > shard_words:
            save(buf[:shard_words])
            buf = buf[shard_words - depth + 1:]
        if final and (not shards or len(buf) > depth - 1):
            save(buf)
        pending, pending_words = [buf], len(buf)

    with tqdm(total=total, unit="B", unit_scale=True, desc="indexing", disable=not progress) as bar:
        for block in _documents_blocks(files, bar.update):
            found = byte_hashes(block)
            words += int(np.count_nonzero(found))
            pending.append(found)
            pending_words += len(found)
            if pending_words > shard_words:
                flush(final=False)
        if words == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"--corpus {corpus}: empty corpus (its {len(files)} files hold no words)")
        flush(final=True)
    manifest = {"version": INDEX_VERSION, "depth": depth, "files": _listing(corpus, files), "bytes": total,
                "words": words, "shards": shards, "seconds": time.perf_counter() - start}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(index_dir, ignore_errors=True)
    os.replace(tmp, index_dir)
    return CorpusIndex(index_dir)


def open_index(corpus: str | Path, index_dir: str | Path, max_ngram: int, rebuild: bool = False,
               shard_words: int = DEFAULT_SHARD_WORDS, progress: bool = True) -> CorpusIndex:
    """The index of ``corpus`` in ``index_dir``, built (or rebuilt) when missing, made for other
    files or too shallow for ``max_ngram``."""
    corpus, index_dir = Path(corpus), Path(index_dir)
    files = corpus_files(corpus)
    depth = 1 << max(0, max_ngram - 1).bit_length()
    why = "--rebuild" if rebuild else None
    if why is None:
        try:
            manifest = json.loads((index_dir / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            manifest, why = None, "no index yet"
        if manifest is not None:
            if manifest.get("version") != INDEX_VERSION:
                why = "index of another version"
            elif manifest["files"] != _listing(corpus, files):
                why = "the corpus files changed"
            elif manifest["depth"] < max_ngram:
                why = f"index depth {manifest['depth']} < max n-gram {max_ngram}"
    if why is None:
        return CorpusIndex(index_dir)
    if progress:
        print(f"building the corpus index in {index_dir} ({why})", flush=True)
    return build_index(corpus, index_dir, depth, shard_words, progress)


# ---------------------------------------------------------------------------------- the measure
def uniqueness(match: np.ndarray, lengths: Iterable[int]) -> dict[int, float]:
    """L -> share of words not inside any found span of L words, from per-word match lengths."""
    m = len(match)
    out = {}
    for L in lengths:
        starts = np.concatenate([[0], np.cumsum(match >= L)])
        # word j is covered when a found L-gram starts in [j-L+1, j]
        j = np.arange(m)
        covered = starts[j + 1] - starts[np.maximum(j - L + 1, 0)] > 0
        out[L] = 1.0 - covered.sum() / m
    return out


def creativity_indices(index: CorpusIndex, texts: Sequence[str], min_ngram: int = 5, max_ngram: int = 12,
                       batch_words: int = 1 << 16, progress: bool = False) -> list[dict]:
    """Per text: ``words``, ``uniqueness`` (L -> 1 - L-coverage), ``creativity_index`` (their mean
    over L in [min_ngram, max_ngram]) and ``creativity_index_sum`` (the paper's sum)."""
    from tqdm import tqdm

    if not 1 <= min_ngram <= max_ngram:
        raise ValueError(f"--min-ngram {min_ngram} / --max-ngram {max_ngram}: need 1 <= min <= max")
    lengths = range(min_ngram, max_ngram + 1)
    hashed = [text_hashes(t) for t in texts]
    results: list[dict] = []
    with tqdm(total=len(texts), unit="response", desc="creativity", disable=not progress) as bar:
        i = 0
        while i < len(hashed):  # batches of responses, one 0 (boundary) after each
            j, size = i, 0
            while j < len(hashed) and (j == i or size + len(hashed[j]) < batch_words):
                size += len(hashed[j]) + 1
                j += 1
            joined = np.concatenate([np.append(h, np.uint64(0)) for h in hashed[i:j]])
            match = index.match_lengths(joined, max_ngram)
            at = 0
            for h in hashed[i:j]:
                results.append(_one(match[at:at + len(h)], lengths))
                at += len(h) + 1
            bar.update(j - i)
            i = j
    return results


def _one(match: np.ndarray, lengths: range) -> dict:
    if len(match) == 0:
        return {"words": 0, "uniqueness": {}, "creativity_index": None, "creativity_index_sum": None}
    u = uniqueness(match, lengths)
    return {"words": len(match), "uniqueness": {str(L): v for L, v in u.items()},
            "creativity_index": sum(u.values()) / len(u), "creativity_index_sum": sum(u.values())}


# ---------------------------------------------------------------------------------- the command
def read_responses(path: str | Path, limit: Optional[int] = None) -> tuple[list[str], list[str]]:
    """(ids, texts) of a JSONL file whose lines hold ``response`` (samples.jsonl) or ``text``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--responses {path}: no such file")
    ids, texts = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                text = rec["response"] if "response" in rec else rec["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}: line {lineno} is not a JSON object with a 'response' or 'text' field") \
                    from None
            if not isinstance(text, str):
                raise ValueError(f"{path}: line {lineno}: the response is not a string")
            key = rec.get("problem_id", rec.get("id", lineno))
            ids.append(f"{rec['source']}/{key}/{rec['sample']}" if "sample" in rec and "source" in rec else str(key))
            texts.append(text)
            if limit and len(texts) >= limit:
                break
    if not texts:
        raise ValueError(f"--responses {path}: no responses")
    return ids, texts


def responses_label(path: Path) -> str:
    """samples.jsonl files are named by their evaluation directory, other files by their stem."""
    return path.resolve().parent.name if path.name == "samples.jsonl" else path.name.split(".")[0]


def run_creativity(corpus: str | Path, responses: Sequence[str | Path], out_dir: str | Path,
                   min_ngram: int = 5, max_ngram: int = 12, index_dir: Optional[str | Path] = None,
                   rebuild: bool = False, shard_words: int = DEFAULT_SHARD_WORDS, limit: Optional[int] = None,
                   progress: bool = True) -> dict:
    """Creativity Index of each responses file; writes creativity.json and creativity.md."""
    if not 1 <= min_ngram <= max_ngram:
        raise ValueError(f"--min-ngram {min_ngram} / --max-ngram {max_ngram}: need 1 <= min <= max")
    check_output_dir(out_dir, "--out")  # before the index, which can take hours to build
    corpus = Path(corpus)
    index_dir = Path(index_dir) if index_dir else corpus.with_name(corpus.name + ".cindex")
    loaded = [(Path(p), *read_responses(p, limit)) for p in responses]
    index = open_index(corpus, index_dir, max_ngram, rebuild, shard_words, progress)
    labels: list[str] = []
    result = {"corpus": str(corpus), "index": str(index_dir), "min_ngram": min_ngram, "max_ngram": max_ngram,
              "corpus_words": index.stats.words, "creativity_index": {}, "mean": {}, "uniqueness": {},
              "ids": {}, "files": {}}
    for path, ids, texts in loaded:
        label = responses_label(path)
        label = label if label not in labels else f"{label}#{labels.count(label) + 1}"
        labels.append(label)
        per = creativity_indices(index, texts, min_ngram, max_ngram, progress=progress)
        values = [p["creativity_index"] for p in per]
        scored = [p for p in per if p["creativity_index"] is not None]
        result["files"][label] = str(path)
        result["ids"][label] = ids
        result["creativity_index"][label] = values
        result["mean"][label] = sum(p["creativity_index"] for p in scored) / len(scored) if scored else None
        result["uniqueness"][label] = {str(L): sum(p["uniqueness"][str(L)] for p in scored) / len(scored)
                                       for L in range(min_ngram, max_ngram + 1)} if scored else {}
    out = make_output_dir(out_dir, "--out")
    (out / "creativity.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "creativity.md").write_text(creativity_table(result))
    return result


def creativity_table(result: dict) -> str:
    ls = range(result["min_ngram"], result["max_ngram"] + 1)
    lines = [f"# Creativity Index against {result['corpus']} ({result['corpus_words']} words)\n",
             f"Mean over L in [{result['min_ngram']}, {result['max_ngram']}] of L-uniqueness (1 = no span of "
             f"{result['min_ngram']}+ words found in the corpus); per-L columns are the mean L-uniqueness.\n",
             "| responses | n | creativity index | " + " | ".join(f"L={L}" for L in ls) + " |",
             "|---" * (3 + len(ls)) + "|"]
    for label, mean in result["mean"].items():
        u = result["uniqueness"][label]
        cells = [f"{u[str(L)]:.3f}" if u else "-" for L in ls]
        lines.append(f"| {label} | {len(result['creativity_index'][label])} | "
                     f"{'-' if mean is None else f'{mean:.3f}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
