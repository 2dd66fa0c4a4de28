"""What the GPU benchmarks share: the CUDA check, the machine-readable result line, the model
(DeepSeek-R1-Distill-Qwen-1.5B's shapes, random weights) and which rollout engines can run.

Each benchmark prints its table for people and one ``BENCH_JSON {...}`` line per measurement
(:func:`emit`), which ``scripts/gpu_selftest.sh`` collects into its table (:func:`records`).
A record has ``bench``, ``name`` and either figures (``mfu``, ``tokens_per_s``, ``sync_s``,
``peak_memory_gib``, ...) or ``skipped`` (why it did not run).

Only the standard library and torch are imported at module level, so that on a machine
without CUDA a benchmark says so in about a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Optional

import torch

BENCH_DIR = Path(__file__).resolve().parents[1]
TESTS_DIR = BENCH_DIR.parent / "tests"
PREFIX = "BENCH_JSON "
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False): nothing to measure"


def require_cuda() -> None:
    """Exit cleanly (status 0, no traceback) with :data:`NO_CUDA` on a machine without CUDA."""
    if not torch.cuda.is_available():
        print(NO_CUDA)
        sys.exit(0)


def emit(record: dict) -> None:
    print(PREFIX + json.dumps(record, sort_keys=True), flush=True)


def records(text: str) -> list[dict]:
    """The records :func:`emit` printed into ``text`` (a benchmark's output), in order."""
    return [json.loads(line[len(PREFIX):]) for line in text.splitlines() if line.startswith(PREFIX)]


def r1_distill_qwen_1p5b() -> dict:
    """DeepSeek-R1-Distill-Qwen-1.5B's config.json (bench/bench_convert.py's CONFIG)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    from bench_convert import CONFIG

    return dict(CONFIG)


def peak_memory_gib() -> float:
    """torch.cuda.max_memory_allocated of this process, in GiB."""
    return torch.cuda.max_memory_allocated() / 2**30


def write_random_hf_dir(out: Path, hf_config: dict) -> Path:
    """``hf_config`` with transformers' random init (std = initializer_range) in bf16, drawn on
    the GPU, and the project's byte tokenizer, as a Hugging Face directory (what TensorRT-LLM
    loads), written by the tests' writer (tests/helpers/hf_models.py)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from helpers.hf_models import write_hf_dir

    write_hf_dir(out, hf_config, dtype=torch.bfloat16, device="cuda")
    torch.cuda.empty_cache()
    return out


def engines(only: Optional[Iterable[str]] = None) -> dict[str, str]:
    """Rollout engine name -> why it cannot run here ("" when it can)."""
    from megatron_prorl.rollout.trtllm import missing_here

    available = {"transformers": "", "tensorrt_llm": missing_here()}
    return {name: why for name, why in available.items() if only is None or name in only}
