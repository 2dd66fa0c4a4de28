"""Trainer-step benchmark on the tiny config: where a step's time goes.

    python bench/bench_trainer_step.py [--steps 30] [CONFIG]

Runs the real loop (the default: configs/tiny_cpu.yaml) in this process and reads the per-step
time breakdown from its metrics. "Other" is everything that is neither generation nor the
trainer's forward/backward/optimizer work: reward waiting, weight sync, batch building,
dynamic-sampling bookkeeping, metrics (target: under 10% of the step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs/tiny_cpu.yaml"))
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()

    from megatron_prorl.train.validate import load_run_config
    from megatron_prorl.train.metrics import read_metrics
    from megatron_prorl.train.trainer import Trainer

    out = tempfile.mkdtemp(prefix="bench_trainer_")
    cfg = load_run_config(args.config, [f"trainer.stages.0.steps={args.steps}", "trainer.val_every=0",
                                    f"trainer.output_dir={out}", "checkpoint.every=0", "logging.progress=false",
                                    "logging.tensorboard=false"])
    cfg.data.val = []  # time training steps only
    Trainer(cfg).run()
    recs = [r for r in read_metrics(out) if r["kind"] == "train"][2:]  # skip warm-up steps
    parts = ["generation", "reward", "reference", "training", "sync"]
    mean = {p: statistics.mean(r[f"time/{p}"] for r in recs) for p in parts + ["step"]}
    other = mean["step"] - sum(mean[p] for p in parts)
    print(f"{len(recs)} steps of {args.config} (after 2 warm-up steps), mean seconds per step:")
    for p in parts:
        print(f"  {p:11s} {mean[p]:7.3f}  {mean[p] / mean['step']:6.1%}")
    print(f"  {'other':11s} {other:7.3f}  {other / mean['step']:6.1%}")
    print(f"  {'step':11s} {mean['step']:7.3f}")
    neither = mean["step"] - mean["generation"] - mean["reference"] - mean["training"]
    print(f"neither generation nor forward/backward: {neither / mean['step']:.1%} of the step "
          f"(reward wait + sync + other); tokens/s {statistics.mean(r['tokens_per_s'] for r in recs):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
