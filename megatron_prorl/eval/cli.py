"""The ``prorl eval`` command line:

    prorl eval --model DIR_OR_CKPT --data SOURCE [SOURCE ...] --out DIR [--samples 16] [--k 1,16]
               [--temperature 0.6] [--top-p 0.95] [--max-new-tokens 32768] ...
    prorl eval compare RESULTS_DIR RESULTS_DIR [...] [--out DIR] [--k K] [--min-change 0.02]
    prorl eval creativity --corpus DIR --responses FILE [FILE ...] --out DIR
               [--min-ngram 5] [--max-ngram 12] [--index DIR] [--rebuild]
"""

from __future__ import annotations

# Each subcommand imports its machinery (torch, the engines, matplotlib) when it runs: --help and
# argument errors stay fast.
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from megatron_prorl.errors import USER_ERRORS
from megatron_prorl.eval.creativity import DEFAULT_SHARD_WORDS
from megatron_prorl.eval.regimes import DEFAULT_MIN_CHANGE, rule_text
from megatron_prorl.eval.run import EvalSettings

_D = EvalSettings(model="", data=())


def _ks(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k {text!r}: expected comma-separated integers, e.g. 1,16,128") from None


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prorl eval", description="Evaluate a model on benchmarks as the ProRL paper does (pass@k, "
        "majority@k, mean reward); rerun the same command to resume. Subcommands: `prorl eval compare ...`, "
        "`prorl eval creativity ...`.")
    p.add_argument("--model", required=True, help="Hugging Face dir, builtin:NAME, megatron-prorl checkpoint, "
                   "or a training run dir (its latest checkpoint)")
    p.add_argument("--data", required=True, nargs="+", metavar="SOURCE",
                   help="[FORMAT=]PATH: a local file in a public format, builtin:..., or reasoning_gym:TASK?config")
    p.add_argument("--out", required=True, help="output directory (rerun with the same settings to resume)")
    p.add_argument("--samples", type=int, default=_D.samples, help="responses per problem (default: %(default)s)")
    p.add_argument("--k", type=_ks, default=None,
                   help="pass@k / majority@k values (default: powers of two up to --samples)")
    p.add_argument("--temperature", type=float, default=_D.temperature,
                   help="sampling temperature (default: %(default)s, the paper's)")
    p.add_argument("--top-p", type=float, default=_D.top_p, help="nucleus sampling (default: %(default)s, the paper's)")
    p.add_argument("--max-new-tokens", type=int, default=_D.max_new_tokens,
                   help="longest response in tokens (default: %(default)s, the paper's)")
    p.add_argument("--max-prompt-length", type=int, default=_D.max_prompt_length,
                   help="cut longer problems at their start (default: never)")
    p.add_argument("--seed", type=int, default=_D.seed,
                   help="seed of the sampling and of generated sources (default: %(default)s)")
    p.add_argument("--size", type=int, default=_D.size, help="problems per generator source (default: %(default)s)")
    p.add_argument("--limit", type=int, default=_D.limit,
                   help="only the first N problems of each source (default: all)")
    p.add_argument("--chunk-problems", type=int, default=_D.chunk_problems,
                   help="problems per engine call and per resume unit (default: %(default)s)")
    p.add_argument("--engine", default=_D.engine,
                   help="auto (TensorRT-LLM where it can run, else transformers), transformers, tensorrt_llm, or an "
                   "engine registered with megatron_prorl.rollout.register_engine (default: %(default)s)")
    p.add_argument("--dtype", default=_D.dtype,
                   help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16 (default: %(default)s)")
    p.add_argument("--engine-max-batch-size", type=int, default=_D.engine_max_batch_size,
                   help="transformers engine: rows (problems x samples) per forward (default: a whole chunk)")
    p.add_argument("--reward-workers", type=int, default=None, help="verifier processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run_main(argv: Sequence[str]) -> int:
    from transformers import AutoTokenizer

    from megatron_prorl.data.model_card import PROMPT_FILE, write_prompt_format
    from megatron_prorl.eval.model import tokenizer_dir
    from megatron_prorl.eval.report import write_report
    from megatron_prorl.eval.run import check_ks, evaluate

    args = run_parser().parse_args(argv)
    settings = EvalSettings(
        model=args.model, data=tuple(args.data), samples=args.samples, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, max_prompt_length=args.max_prompt_length,
        seed=args.seed, size=args.size, limit=args.limit, chunk_problems=args.chunk_problems, engine=args.engine,
        dtype=args.dtype, engine_max_batch_size=args.engine_max_batch_size)
    settings.check()
    ks = check_ks(args.k or [1 << i for i in range(args.samples.bit_length())], args.samples)
    records = evaluate(settings, args.out, reward_workers=args.reward_workers, progress=not args.quiet)
    prompt = write_prompt_format(Path(args.out), sorted({r["domain"] for r in records}),
                                 AutoTokenizer.from_pretrained(str(tokenizer_dir(args.model))))
    write_report(args.out, records, ks, settings.to_json(), Path(args.model).name or args.model, prompt)
    print((Path(args.out) / "summary.md").read_text())
    print(f"results: {Path(args.out) / 'results.json'}, plot: {Path(args.out) / 'pass_at_k.png'}, "
          f"prompt format: {Path(args.out) / PROMPT_FILE}")
    return 0


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prorl eval compare",
                                description="Compare evaluations (checkpoints in training order) and classify "
                                "each benchmark's regime.\n\n" + rule_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="`prorl eval --out` directories, in order")
    p.add_argument("--out", default="eval_compare", help="output directory (default: %(default)s)")
    p.add_argument("--k", type=int, default=None, help="the large k of the rule (default: largest in common)")
    p.add_argument("--min-change", type=float, default=DEFAULT_MIN_CHANGE,
                   help="absolute change that counts as a move (default: %(default)s)")
    return p


def compare_main(argv: Sequence[str]) -> int:
    from megatron_prorl.eval.compare import COMPARE_JSON, COMPARE_MD, COMPARE_PNG, compare

    args = compare_parser().parse_args(argv)
    compare(args.results, args.out, args.k, args.min_change)
    print((Path(args.out) / COMPARE_MD).read_text())
    print("written: " + ", ".join(str(Path(args.out) / name) for name in (COMPARE_MD, COMPARE_JSON, COMPARE_PNG)))
    return 0


def creativity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prorl eval creativity",
                                description="Creativity Index (Lu et al. 2024) of responses against a local corpus.")
    p.add_argument("--corpus", required=True, help="directory of .txt / .jsonl / .jsonl.gz files")
    p.add_argument("--responses", required=True, nargs="+", metavar="FILE",
                   help="samples.jsonl of `prorl eval`, or JSONL with a 'text' field; several: side by side")
    p.add_argument("--out", required=True, help="output directory (creativity.json, creativity.md)")
    p.add_argument("--min-ngram", type=int, default=5,
                   help="shortest span L, in words, looked up in the corpus (default: %(default)s)")
    p.add_argument("--max-ngram", type=int, default=12,
                   help="longest span L, in words; the index averages over L (default: %(default)s)")
    p.add_argument("--index", default=None, help="index directory (default: CORPUS.cindex beside the corpus)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index even if it is up to date")
    p.add_argument("--shard-words", type=int, default=DEFAULT_SHARD_WORDS,
                   help="words per index shard: bounds the memory of indexing (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N responses of each file (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def creativity_main(argv: Sequence[str]) -> int:
    from megatron_prorl.eval.creativity import run_creativity

    args = creativity_parser().parse_args(argv)
    run_creativity(args.corpus, args.responses, args.out, args.min_ngram, args.max_ngram, args.index,
                   args.rebuild, args.shard_words, args.limit, progress=not args.quiet)
    print((Path(args.out) / "creativity.md").read_text())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = {"compare": compare_main, "creativity": creativity_main}.get(argv[0] if argv else "", None)
    try:
        return command(argv[1:]) if command else run_main(argv)
    except (ValueError, FileNotFoundError, *USER_ERRORS) as exc:
        print(f"prorl eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
