"""The `prorl` command.

    prorl train CONFIG [key=value ...] [--nproc N] [--debug]
    prorl plot RUN_DIR [--out DIR]
    prorl data prepare --out DIR [--only DOMAIN ...]   (see megatron_prorl/data/prepare.py)
    prorl eval --model DIR_OR_CKPT --data SOURCE [...] --out DIR    (also: eval compare, eval creativity)

Under torchrun or srun, `prorl train` joins the job as one rank. Run directly, it starts
``--nproc`` local processes itself (default: tensor x pipeline parallel size), so a CPU run at
TP2 x PP2 is one command. A mistake in the input (config, data, model, checkpoint, an output
directory another run holds) is one line, ``prorl: error: ...``, with exit code 2, found
before any rank starts where it can be; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from megatron_prorl.config import ProRLConfig
from megatron_prorl.errors import USER_ERRORS, UserError
from megatron_prorl.plugins import load_plugins


def check_before_start(cfg: ProRLConfig, world_size: int) -> None:
    """What can be checked without starting ranks: the model's config.json against the layout
    and the world size (and against the checkpoint the run resumes), and the stage schedule."""
    from checkpoint_convert.arch import hf_arch, read_hf_config
    from megatron_prorl.models.builder import resolve_hf_dir
    from megatron_prorl.train.stages import resolve_stages
    from megatron_prorl.train.validate import check_resume_layout, validate

    hf_dir = resolve_hf_dir(cfg.model.hf_dir)
    hf_config = read_hf_config(hf_dir)
    hf_arch(hf_config, source=str(hf_dir / "config.json"))
    check_resume_layout(cfg, hf_config, world_size)
    validate(cfg, hf_config, world_size=world_size)
    resolve_stages(cfg)


def _train_rank(config_path: str, overrides: list[str], hold_lock: bool) -> dict:
    from megatron_prorl.runtime.distributed import detect_env
    from megatron_prorl.runtime.run_lock import RunLock
    from megatron_prorl.train.trainer import Trainer
    from megatron_prorl.train.validate import load_run_config

    load_plugins()  # a spawned rank starts afresh: the user's registrations again
    cfg = load_run_config(config_path, overrides)
    logging.basicConfig(level=logging.INFO if detect_env().rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its INFO lists every parameter
    with RunLock(cfg.trainer.output_dir) if hold_lock else contextlib.nullcontext():
        return Trainer(cfg).run()


def _print_summary(summary: dict, run_dir: str) -> None:
    steps, stopped_by = summary["steps"], summary.get("stopped_by")
    if stopped_by:
        print(f"\nProRL run stopped by {stopped_by} at step {steps} of {summary['total_steps']} (checkpointed; "
              f"the same command resumes it), {len(summary['resets'])} reference resets")
    else:
        print(f"\nProRL run finished: {steps} steps, {len(summary['resets'])} reference resets")
    for change in summary.get("layout_changes", []):
        print(f"  layout changed at step {change['step']}: {change['from']} -> {change['to']}")
    before, last = summary.get("before"), summary.get("last_validation")
    if last and last["step"] == steps and before and before is not last:
        for key in sorted(k for k in before if k.startswith("val/")):
            print(f"  {key:28s} before {before[key]:.3f}  ->  after {last[key]:.3f}  ({last[key] - before[key]:+.3f})")
    elif last:
        print(f"  last validation at step {last['step']}:")
        for key in sorted(k for k in last if k.startswith("val/")):
            print(f"  {key:28s} {last[key]:.3f}")
    try:
        from megatron_prorl.train.plot import plot_run

        paths = plot_run(run_dir)
        print("  charts: " + ", ".join(str(p) for p in paths))
    except Exception as exc:  # charts are a convenience: never fail a finished run over them
        print(f"  (charts not written: {exc})")
    print(f"  metrics: {os.path.join(run_dir, 'metrics.jsonl')}")


def train(args) -> int:
    from megatron_prorl.runtime.distributed import detect_env, under_launcher
    from megatron_prorl.runtime.run_lock import RunLock
    from megatron_prorl.train.validate import load_run_config

    cfg = load_run_config(args.config, args.overrides)  # fail fast, before any process starts
    mp = cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    env = detect_env()
    launched = under_launcher()
    nproc = env.world_size if launched else args.nproc or mp
    check_before_start(cfg, nproc)
    if launched or nproc == 1:
        # Under torchrun/srun the first rank holds the run directory for the job.
        summary = _train_rank(args.config, args.overrides, hold_lock=env.rank == 0)
    else:
        from megatron_prorl.runtime.launch import spawn

        with RunLock(cfg.trainer.output_dir):  # before any rank starts: a second run is refused at once
            summary = spawn(_train_rank, nproc, args.config, args.overrides, False, timeout=None)[0]
    if env.rank == 0:  # under srun or torchrun every rank returns here
        _print_summary(summary, cfg.trainer.output_dir)
        write_summary(summary, cfg.trainer.output_dir)
    return 0


def write_summary(summary: dict, run_dir: str) -> None:
    """RUN_DIR/summary.json; a disk that fills up now is one line: the run is checkpointed."""
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)
    except OSError as exc:
        raise UserError(f"{path}: not written ({exc.strerror or exc}); the run itself is checkpointed") from exc


def plot(args) -> int:
    from megatron_prorl.train.plot import main as plot_main

    return plot_main([args.run_dir] + (["--out", args.out] if args.out else []))


def build_parser() -> argparse.ArgumentParser:
    from megatron_prorl.data import prepare

    parser = argparse.ArgumentParser(prog="prorl", description="ProRL on Megatron-Core")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run the ProRL loop from a YAML config")
    t.add_argument("config", help="YAML config, e.g. configs/tiny_cpu.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rollout.n=8")
    t.add_argument("--nproc", type=int, default=None,
                   help="local processes to start when not under torchrun/srun (default: TP x PP)")
    t.add_argument("--debug", action="store_true", help="show the traceback of an error in the input")
    t.set_defaults(func=train)
    p = sub.add_parser("plot", help="write PNG charts of a run's metrics")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.set_defaults(func=plot)
    d = sub.add_parser("data", help="training data").add_subparsers(dest="data_command", required=True)
    dp = d.add_parser("prepare", help="write the paper config's data files from ProRL's public datasets")
    prepare.add_arguments(dp)
    dp.set_defaults(func=prepare.run)
    sub.add_parser("eval", add_help=False,
                   help="evaluate a model (pass@k, majority@k), compare checkpoints, Creativity Index; "
                        "`prorl eval --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        load_plugins()
    except UserError as exc:
        print(f"prorl: error: {exc}", file=sys.stderr)
        return 2
    if argv[:1] == ["eval"]:  # its own parser, with subcommands (megatron_prorl/eval/cli.py)
        from megatron_prorl.eval.cli import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if getattr(args, "debug", False):
            raise
        print(f"prorl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
