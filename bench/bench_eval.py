"""`prorl eval` throughput and the Creativity Index index's cost.

1. Evaluation: responses generated and scored per second with the shipped tiny model on CPU
   (transformers engine + RewardPool, the `prorl eval` path), the paper's sampling settings
   (T 0.6, top_p 0.95, 16 samples per problem), on its held-out addition problems; the one-off
   start-up (engine, weights, reward workers) is reported apart.
2. Creativity index: a generated corpus of ``--corpus-mb`` MB (default 1024) of text over a
   Zipf-distributed 200k-word vocabulary, in 64 MB files; the index is built in a child process
   (`build_index`), whose wall time gives MB/s and whose peak RSS is the build's memory.
3. Queries: Creativity Index of 300-word responses (half copied from the corpus in part, half
   fresh) against that index, responses per second, page cache warm.

Usage: python bench/bench_eval.py [--corpus-mb 1024] [--problems 64] [--workdir DIR] [--skip-eval]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from megatron_prorl.eval import creativity as C

FILE_MB = 64


def bench_eval(problems: int, workers: int) -> None:
    from megatron_prorl.eval.model import hf_model_dir
    from megatron_prorl.eval.run import EvalSettings, Sampler
    from megatron_prorl.eval.sources import load_sources

    settings = EvalSettings(model="builtin:tiny", data=("builtin:tiny/heldout.jsonl",), max_new_tokens=24,
                            limit=problems, chunk_problems=32)
    (source,) = load_sources(settings.data, limit=problems)
    with tempfile.TemporaryDirectory() as tmp, hf_model_dir(settings.model, Path(tmp)) as hf_dir:
        t0 = time.perf_counter()
        with Sampler(hf_dir, settings, ["math"], reward_workers=workers) as sampler:
            sampler.sample(source, 0, seed=1)  # warm-up: first forward, worker imports
            start = time.perf_counter() - t0
            t0, c0 = time.perf_counter(), _cpu()
            records = [r for c in range(-(-problems // 32)) for r in sampler.sample(source, c, seed=2 + c)]
            seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    tokens = sum(r["length"] for r in records)
    print(f"eval (tiny, CPU, {workers} reward worker(s)): {len(records)} responses in {seconds:.2f} s = "
          f"{len(records) / seconds:.0f} responses/s, {len(records) / cpu:.0f} per CPU s of the process and its "
          f"workers ({tokens / seconds:.0f} tokens/s, mean {tokens / len(records):.1f} tokens); start-up incl. "
          f"a warm-up chunk {start:.1f} s")


def _cpu() -> float:
    """CPU seconds of this process and its live children (the reward workers)."""
    me = psutil.Process()
    return sum(sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)])


def make_corpus(directory: Path, megabytes: int, seed: int = 0) -> int:
    """Zipf text in FILE_MB files; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    vocab_size = 200_000
    lengths = np.clip(rng.poisson(5, vocab_size), 1, 14) + 1  # with the trailing space
    letters = rng.integers(ord("a"), ord("z") + 1, lengths.sum(), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    letters[offsets[1:] - 1] = ord(" ")
    weights = 1.0 / np.arange(1, vocab_size + 1) ** 1.05
    cdf = np.cumsum(weights) / weights.sum()
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    index = 0
    while written < megabytes << 20:
        size = min(FILE_MB << 20, (megabytes << 20) - written)
        ids = np.searchsorted(cdf, rng.random(size // 5))
        parts, total = [], 0
        for start in range(0, len(ids), 1 << 22):
            chunk = ids[start:start + (1 << 22)]
            lens = lengths[chunk]
            starts = offsets[chunk]
            pos = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
            parts.append(letters[pos])
            total += lens.sum()
            if total >= size:
                break
        data = np.concatenate(parts)[:size]
        data[::4096] = ord("\n")  # paragraphs
        (directory / f"part{index:04d}.txt").write_bytes(data.tobytes())
        written += len(data)
        index += 1
    return written


def bench_creativity(workdir: Path, megabytes: int, shard_words: int) -> None:
    corpus = workdir / "corpus"
    t0 = time.perf_counter()
    nbytes = make_corpus(corpus, megabytes)
    print(f"corpus: {nbytes / 1e6:.0f} MB generated in {time.perf_counter() - t0:.0f} s")
    index_dir = workdir / "index"
    code = ("import sys; from megatron_prorl.eval.creativity import build_index; "
            f"build_index(sys.argv[1], sys.argv[2], depth=16, shard_words={shard_words}, progress=False)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(corpus), str(index_dir)], check=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    peak = after.ru_maxrss / 1024
    index = C.CorpusIndex(index_dir)
    disk = sum(p.stat().st_size for p in index_dir.rglob("*.npy"))
    print(f"index build: {nbytes / 1e6:.0f} MB, {index.stats.words / 1e6:.0f} M words, {len(index.shards)} shards "
          f"in {seconds:.0f} s = {nbytes / 1e6 / seconds:.1f} MB/s ({cpu:.0f} CPU s = {nbytes / 1e6 / cpu:.1f} MB "
          f"per CPU s); peak RSS {peak:.0f} MB; "
          f"index on disk {disk / 1e6:.0f} MB")

    rng = np.random.default_rng(1)
    files = sorted(corpus.glob("*.txt"))
    texts = []
    for i in range(200):
        raw = files[i % len(files)].read_bytes()
        at = int(rng.integers(0, len(raw) - 4000))
        words = raw[at:at + 4000].decode().split()[1:151]
        fresh = [f"x{int(v)}" for v in rng.integers(0, 10**6, 150)]
        texts.append(" ".join(words + fresh if i % 2 else fresh[:75] + words + fresh[75:]))
    C.creativity_indices(index, texts[:10])  # warm the page cache of the query path
    t0, c0 = time.perf_counter(), time.process_time()
    values = C.creativity_indices(index, texts)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    mean = sum(v["creativity_index"] for v in values) / len(values)
    print(f"queries: {len(texts)} responses of 300 words in {seconds:.2f} s = {len(texts) / seconds:.1f} "
          f"responses/s ({len(texts) / cpu:.1f} per CPU s; mean creativity index {mean:.3f}; half of each "
          "response copied: expect ~0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-mb", type=int, default=1024)
    parser.add_argument("--shard-words", type=int, default=C.DEFAULT_SHARD_WORDS)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--reward-workers", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the corpus and index go (default: a temp dir)")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--skip-creativity", action="store_true")
    args = parser.parse_args()
    if not args.skip_eval:
        bench_eval(args.problems, args.reward_workers)
    if not args.skip_creativity:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_eval_"))
        try:
            bench_creativity(workdir, args.corpus_mb, args.shard_words)
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
