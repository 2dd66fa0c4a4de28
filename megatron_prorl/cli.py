"""The `prorl` command.

    prorl train CONFIG [key=value ...] [--nproc N]
    prorl plot RUN_DIR [--out DIR]

Under torchrun or srun, `prorl train` joins the job as one rank. Run directly, it starts
``--nproc`` local processes itself (default: tensor x pipeline parallel size), so a CPU run at
TP2 x PP2 is one command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from megatron_prorl.config import ConfigError, load_config


def _under_launcher() -> bool:
    return "RANK" in os.environ or "SLURM_PROCID" in os.environ


def _rank() -> int:
    """This process's rank under torchrun or srun; 0 run directly (the parent of local ranks)."""
    from megatron_prorl.distributed import detect_env

    return detect_env().rank


def _train_rank(config_path: str, overrides: list[str]) -> dict:
    from megatron_prorl.trainer import Trainer

    cfg = load_config(config_path, overrides)
    logging.basicConfig(level=logging.INFO if _rank() == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its INFO lists every parameter
    return Trainer(cfg).run()


def _print_summary(summary: dict, run_dir: str) -> None:
    before, after = summary.get("before"), summary.get("after")
    print(f"\nProRL run finished: {summary['steps']} steps, {len(summary['resets'])} reference resets")
    if before and after:
        for key in sorted(k for k in before if k.startswith("val/")):
            print(f"  {key:28s} before {before[key]:.3f}  ->  after {after[key]:.3f}  ({after[key] - before[key]:+.3f})")
    try:
        from megatron_prorl.plot import plot_run

        paths = plot_run(run_dir)
        print("  charts: " + ", ".join(str(p) for p in paths))
    except Exception as exc:  # charts are a convenience: never fail a finished run over them
        print(f"  (charts not written: {exc})")
    print(f"  metrics: {os.path.join(run_dir, 'metrics.jsonl')}")


def train(args) -> int:
    cfg = load_config(args.config, args.overrides)  # fail fast, before any process starts
    mp = cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    nproc = args.nproc or mp
    if _under_launcher() or nproc == 1:
        summary = _train_rank(args.config, args.overrides)
    else:
        from megatron_prorl.launch import spawn

        summary = spawn(_train_rank, nproc, args.config, args.overrides, timeout=None)[0]
    if _rank() == 0:  # under srun every rank runs this; only the first reports
        _print_summary(summary, cfg.trainer.output_dir)
        with open(os.path.join(cfg.trainer.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return 0


def plot(args) -> int:
    from megatron_prorl.plot import main as plot_main

    return plot_main([args.run_dir] + (["--out", args.out] if args.out else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prorl", description="ProRL on Megatron-Core")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run the ProRL loop from a YAML config")
    t.add_argument("config", help="YAML config, e.g. configs/tiny_cpu.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rollout.n=8")
    t.add_argument("--nproc", type=int, default=None,
                   help="local processes to start when not under torchrun/srun (default: TP x PP)")
    t.set_defaults(func=train)
    p = sub.add_parser("plot", help="write PNG charts of a run's metrics")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.set_defaults(func=plot)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"prorl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
