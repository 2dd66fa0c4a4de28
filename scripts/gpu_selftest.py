"""The GPU self-check behind ``bash scripts/gpu_selftest.sh`` (README: "GPU self-check").

Runs the GPU tests (``pytest -m gpu tests/gpu``, results read from its JUnit XML) and the GPU
benchmarks (bench/gpu/*.py, results read from the ``BENCH_JSON`` lines they print), then prints
one table: every test and measurement with passed / failed / skipped (and why), MFU, tokens/s,
weight-sync seconds and peak memory. Exit status 0 only when nothing failed; 1 on a failure, and
on a machine without a CUDA device (said in one line, before anything runs). Logs go to
--out (default runs/gpu_selftest/TIMESTAMP).

The rollout engine a run here will use (--engine; auto: TensorRT-LLM where its package is
installed, as in the image, else the transformers engine) must be able to start: anything it
needs that is missing (TensorRT-LLM of the targeted release, ray, ...) is a failure of its own
row, not only the skip of the tests that need it.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

BENCHES = ("bench/gpu/bench_memory_plan.py", "bench/gpu/bench_policy_mfu.py", "bench/gpu/bench_rollout.py",
           "bench/gpu/bench_weight_sync.py")
TESTS = "tests/gpu"
NOTE_WIDTH = 100


@dataclass
class Row:
    check: str
    result: str  # "passed", "failed" or "skipped"
    note: str = ""
    mfu: Optional[float] = None
    tokens_per_s: Optional[float] = None
    sync_s: Optional[float] = None
    peak_gib: Optional[float] = None


def _lines(text: Optional[str]) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()] or [""]


def junit_rows(junit_xml: Path) -> list[Row]:
    """One row per test case of a pytest JUnit XML report."""
    rows = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        check = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            rows.append(Row(check, "passed"))
        elif outcome.tag == "skipped":
            rows.append(Row(check, "skipped", _lines(outcome.get("message"))[0]))
        else:
            rows.append(Row(check, "failed", _lines(outcome.get("message"))[0] or outcome.tag))
    return rows


def bench_output_rows(script: str, returncode: int, output: str) -> list[Row]:
    """The rows of one benchmark run: its records, and a failure when it exited non-zero or
    measured nothing."""
    if str(ROOT / "bench" / "gpu") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from gpu_common import records  # the benchmarks' own result format (it imports torch)

    rows = []
    for r in records(output):
        if "skipped" in r:
            rows.append(Row(r["name"], "skipped", r["skipped"]))
        else:
            rows.append(Row(r["name"], "passed", _note(r), mfu=r.get("mfu"), tokens_per_s=r.get("tokens_per_s"),
                            sync_s=r.get("sync_s"), peak_gib=r.get("peak_memory_gib")))
    if returncode != 0:
        rows.append(Row(script, "failed", f"exit status {returncode}: {_lines(output)[-1]}"))
    elif not rows:
        rows.append(Row(script, "failed", "printed no BENCH_JSON result"))
    return rows


def _note(record: dict) -> str:
    """What a measured row needs said beside its figures."""
    notes = [record["spec"]] if record.get("spec") else []
    if "mfu" in record and record["mfu"] is None:
        notes.append(f"MFU n/a: no peak for {record.get('device')} ({record.get('model_tflops', 0):.0f} model TFLOP/s)")
    if record.get("peak_memory_gib") is None and "device_used_gib" in record:
        notes.append(f"memory in the engine's workers: {record['device_used_gib']:.1f} GiB in use on the device")
    return "; ".join(notes)


def format_table(rows: list[Row]) -> str:
    def cell(value: Optional[float], fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    table = [("check", "result", "MFU", "tokens/s", "sync s", "peak GiB", "note")]
    table += [(r.check, r.result, cell(r.mfu, ".1%"), cell(r.tokens_per_s, ",.0f"), cell(r.sync_s, ".3f"),
               cell(r.peak_gib, ".1f"), r.note[:NOTE_WIDTH]) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    right = {2, 3, 4, 5}  # numbers
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                     for line in table)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(torch) -> str:
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return (f"{', '.join(names)} x{torch.cuda.device_count()}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"megatron-core {_version('megatron-core')}, Transformer Engine {_version('transformer_engine')}, "
            f"TensorRT-LLM {_version('tensorrt_llm')}")


def resolve_engine(choice: str) -> str:
    """The engine the self-check holds the machine to: ``choice``, or for "auto" TensorRT-LLM
    where its package is installed (the image is built for it), else the transformers engine."""
    if choice != "auto":
        return choice
    return "tensorrt_llm" if _version("tensorrt_llm") != "not installed" else "transformers"


def engine_row(engine: str) -> Optional[Row]:
    """A failed row when ``engine`` cannot start on this machine (None when it can)."""
    if engine == "transformers":  # torch and transformers only, both checked by every test
        return None
    from megatron_prorl.rollout.trtllm import missing_here  # found without importing tensorrt_llm

    problem = missing_here()
    return Row(f"rollout engine {engine}", "failed", problem) if problem else None


def _run(what: str, cmd: list[str], log: Path) -> tuple[int, str]:
    print(f"running {what} (log: {log}) ...", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    print(f"  exit status {done.returncode} after {time.monotonic() - start:.0f} s", flush=True)
    return done.returncode, log.read_text(errors="replace")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="where the logs go (default runs/gpu_selftest/TIMESTAMP)")
    ap.add_argument("--no-bench", action="store_true", help="the tests only")
    ap.add_argument("--engine", choices=("auto", "transformers", "tensorrt_llm"), default="auto",
                    help="the rollout engine runs here will use (rollout.engine); auto: tensorrt_llm where "
                         "its package is installed, else transformers")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError as err:
        print(f"no CUDA device can be used: torch is not importable with {sys.executable} ({err})")
        return 1
    if not torch.cuda.is_available():
        print(f"no CUDA device (torch.cuda.is_available() is False with {sys.executable}): "
              "the GPU self-check needs one")
        return 1
    if importlib.util.find_spec("pytest") is None:
        print(f"pytest is not installed with {sys.executable}: pip install 'megatron-prorl[test]' (or pytest)")
        return 1

    out = args.out or ROOT / "runs" / "gpu_selftest" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU self-check on {machine(torch)}", flush=True)
    engine = resolve_engine(args.engine)
    failed_engine = engine_row(engine)
    print(f"rollout engine {engine}: " + (f"CANNOT START: {failed_engine.note}" if failed_engine else "available"),
          flush=True)
    junit = out / "gpu_tests.xml"
    pytest_cmd = [sys.executable, "-m", "pytest", "-m", "gpu", TESTS, "-q", "-rA", "-p", "no:cacheprovider",
                  f"--junitxml={junit}"]
    code, text = _run(f"pytest -m gpu {TESTS}", pytest_cmd, out / "gpu_tests.log")
    tests = junit_rows(junit) if junit.is_file() else []
    if code not in (0, 1) or not tests:  # 1: some test failed (its row says which); else pytest itself did
        tests.append(Row(f"pytest -m gpu {TESTS}", "failed", f"exit status {code}: {_lines(text)[-1]}"))
    rows = ([failed_engine] if failed_engine else []) + tests
    for script in () if args.no_bench else BENCHES:
        code, text = _run(script, [sys.executable, script], out / (Path(script).stem + ".log"))
        rows += bench_output_rows(script, code, text)

    print()
    print(format_table(rows))
    counts = {k: sum(r.result == k for r in rows) for k in ("passed", "failed", "skipped")}
    verdict = "FAILED" if counts["failed"] else "OK"
    print(f"\n{verdict}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; "
          f"logs in {out}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
