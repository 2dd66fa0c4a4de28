"""Fixtures of the conversion tests: four small HF models, their conversions, the live-model checks.

Both jobs run once per session in spawned processes (convert_jobs): they initialise gloo
groups and the CPU backend, which must not leak into the pytest process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from convert_jobs import LAYOUTS, ckpt_name, distributed_job, offline_job
from convert_models import VARIANTS, write_variant
from transformers import AutoModelForCausalLM

from megatron_prorl.runtime.launch import spawn


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: write_variant(root, name) for name in VARIANTS}


@pytest.fixture(scope="session")
def offline(hf_dirs, tmp_path_factory) -> tuple[Path, dict]:
    """(root, results) of convert_jobs.offline_job: root holds ckpt/<name> (Megatron) and
    back/<name> (HF again) for every variant and layout."""
    root = tmp_path_factory.mktemp("converted")
    [results] = spawn(offline_job, 1, {k: str(v) for k, v in hf_dirs.items()}, str(root))
    assert set(results["lines"]) == {ckpt_name(v, tp, pp) for v in VARIANTS for tp, pp in LAYOUTS}
    return root, results


DISTRIBUTED_WORLD = 8  # TP4 x PP2 needs 8 ranks; smaller layouts run with data-parallel replicas


@pytest.fixture(scope="session")
def distributed(hf_dirs, offline, tmp_path_factory) -> tuple[list[dict], Path]:
    """(rows of convert_jobs.distributed_job from every rank, the checkpoint it saved)."""
    root, _ = offline
    saved = tmp_path_factory.mktemp("saved") / "llama"
    tokens = torch.randint(300, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = {}
    for variant, path in hf_dirs.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            reference[variant] = model(tokens).logits
    per_rank = spawn(distributed_job, DISTRIBUTED_WORLD, {k: str(v) for k, v in hf_dirs.items()},
                     str(root / "ckpt"), str(saved), tokens, reference, timeout=900)
    return [row for rank_rows in per_rank for row in rank_rows], saved
