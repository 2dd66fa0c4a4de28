"""What the resume check of the training data costs: the digest of every pool (rows in order,
:func:`megatron_prorl.data.sampler.rows_digest`) over the paper's 136k problems, next to reading
the same rows from their JSONL files (what every start does anyway), in one run.

The rows are synthetic, sized like the paper's sources (prompt and ground truth lengths in
bytes, per domain: math 40k rows, 300 B prompts; code 24k, 1.5 kB prompts + ``--code-tests-kb``
of test cases; STEM 25k, 600 B; logic 37k, 500 B + a 1 kB Reasoning Gym entry; instruction
following 10k, 500 B + constraint kwargs). A digest is computed once per process, at the first
checkpoint or on resume.

Usage: python bench/bench_data_digest.py [--scale 1.0] [--code-tests-kb 8]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from megatron_prorl.config import DataSourceConfig
from megatron_prorl.data import Row, load_source, save_rows
from megatron_prorl.data.sampler import rows_digest


def text(rng: random.Random, size: int) -> str:
    words = ("the", "sum", "of", "integer", "prove", "find", "value", "x", "triangle", "prime", "let", "=")
    return " ".join(rng.choice(words) for _ in range(size // 5))


def pools(scale: float, code_tests_kb: int) -> dict[str, list[Row]]:
    rng = random.Random(0)

    def n(paper_rows: int) -> int:
        return max(1, int(paper_rows * scale))

    math = [Row(text(rng, 300), "math", str(rng.randint(0, 10**6)), id=f"m{i}") for i in range(n(40_000))]
    tests = max(1, code_tests_kb * 1024 // 200)  # ~200 B per stdin/stdout pair
    code = [Row(text(rng, 1500), "code", {"inputs": [text(rng, 100) for _ in range(tests)],
                                          "outputs": [text(rng, 100) for _ in range(tests)]}, id=f"c{i}")
            for i in range(n(24_000))]
    stem = [Row(text(rng, 600), "stem", rng.choice("ABCD"), id=f"s{i}") for i in range(n(25_000))]
    logic = [Row(text(rng, 500), "logic", {"task": "chain_sum", "entry": {
        "question": text(rng, 500), "answer": str(rng.randint(0, 999)),
        "metadata": {"terms": (1, 2, 3), "source": text(rng, 400)}}}, id=f"l{i}") for i in range(n(37_000))]
    ifeval = [Row(text(rng, 500), "ifeval", {"instruction_id_list": ["length_constraints:number_words"],
                                             "kwargs": [{"num_words": 300, "relation": "at least"}]}, id=f"i{i}")
              for i in range(n(10_000))]
    return {"math": math, "code": code, "stem": stem, "logic": logic, "ifeval": ifeval}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's row counts")
    parser.add_argument("--code-tests-kb", type=int, default=8, help="test-case bytes per code row, in kB")
    args = parser.parse_args()
    data = pools(args.scale, args.code_tests_kb)
    rows = sum(map(len, data.values()))
    print(f"{rows} rows ({', '.join(f'{k} {len(v)}' for k, v in data.items())}), code tests {args.code_tests_kb} kB/row")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, pool in data.items():
            files[name] = Path(tmp) / f"{name}.jsonl"
            save_rows(pool, files[name])
        size = sum(f.stat().st_size for f in files.values())
        load_s = timed(lambda: [load_source(DataSourceConfig(path=str(f))) for f in files.values()])
    digest_s = timed(lambda: [rows_digest(pool) for pool in data.values()])
    # CPU seconds of this process: on a machine shared with other work the wall clock says little.
    print(f"{'read the JSONL files (every start)':40s} {load_s:7.2f} CPU s  ({size / 2**20:.0f} MiB)")
    print(f"{'digest every pool (once per process)':40s} {digest_s:7.2f} CPU s  "
          f"({rows / digest_s / 1000:.0f}k rows/s, {digest_s / load_s:.2f}x the reading)")


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


if __name__ == "__main__":
    main()
