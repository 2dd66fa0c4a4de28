"""The `prorl` command.

    prorl train CONFIG [key=value ...] [--nproc N]
    prorl plot RUN_DIR [--out DIR]
    prorl data prepare --out DIR [--only DOMAIN ...]   (see megatron_prorl/data/prepare.py)
    prorl eval --model DIR_OR_CKPT --data SOURCE [...] --out DIR    (also: eval compare, eval creativity)

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

from checkpoint_convert.errors import ConversionError
from megatron_prorl.config import ConfigError, load_config


def _train_rank(config_path: str, overrides: list[str]) -> dict:
    from megatron_prorl.distributed import detect_env
    from megatron_prorl.trainer import Trainer

    cfg = load_config(config_path, overrides)
    rank0 = detect_env().rank == 0
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING,
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
    from megatron_prorl.distributed import detect_env, under_launcher

    cfg = load_config(args.config, args.overrides)  # fail fast, before any process starts
    mp = cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    nproc = args.nproc or mp
    if under_launcher() or nproc == 1:
        summary = _train_rank(args.config, args.overrides)
    else:
        from megatron_prorl.launch import spawn

        summary = spawn(_train_rank, nproc, args.config, args.overrides, timeout=None)[0]
    if detect_env().rank == 0:  # under srun or torchrun every rank returns here
        _print_summary(summary, cfg.trainer.output_dir)
        with open(os.path.join(cfg.trainer.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return 0


def plot(args) -> int:
    from megatron_prorl.plot import main as plot_main

    return plot_main([args.run_dir] + (["--out", args.out] if args.out else []))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:  # its own parser, with subcommands (megatron_prorl/eval/cli.py)
        from megatron_prorl.eval.cli import main as eval_main

        return eval_main(argv[1:])
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
    from megatron_prorl.data import prepare

    d = sub.add_parser("data", help="training data").add_subparsers(dest="data_command", required=True)
    dp = d.add_parser("prepare", help="write the paper config's data files from ProRL's public datasets")
    prepare.add_arguments(dp)
    dp.set_defaults(func=prepare.run)
    sub.add_parser("eval", add_help=False,
                   help="evaluate a model (pass@k, majority@k), compare checkpoints, Creativity Index; "
                        "`prorl eval --help`")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ConversionError, FileNotFoundError) as exc:
        print(f"prorl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
