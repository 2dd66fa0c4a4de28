"""The `prorl` command.

    prorl train CONFIG [key=value ...] [--nproc N] [--debug]
    prorl plan CONFIG [key=value ...] [--gpu-memory 81559MiB] [--gpus N] [--json]
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

# Each command imports its machinery (torch, Megatron-Core, the trainer) when it runs, inside its
# function: `prorl --help`, a typo in the arguments and `prorl plot` stay fast.
import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Optional

from megatron_prorl import version_line
from megatron_prorl.config import ProRLConfig, env_hint
from megatron_prorl.errors import USER_ERRORS, RunFailure, UserError
from megatron_prorl.plugins import load_plugins


def check_before_start(cfg: ProRLConfig, world_size: int, report: bool = True) -> Optional[str]:
    """What can be checked without starting ranks: the output directory, the model's config.json
    against the layout and the world size, the data files, the stage schedule, and, resuming,
    the changes from the checkpoint's config (:mod:`megatron_prorl.train.resume`); then, on GPUs,
    the memory plan. Returns the line to print instead of starting when the run has already
    finished every step."""
    from checkpoint_convert.arch import hf_arch, read_hf_config
    from megatron_prorl.data.loader import check_files
    from megatron_prorl.models.builder import resolve_hf_dir
    from megatron_prorl.runtime.run_lock import check_output_dir
    from megatron_prorl.train import resume
    from megatron_prorl.train.stages import resolve_stages, total_steps
    from megatron_prorl.train.validate import validate

    check_output_dir(cfg.trainer.output_dir, "trainer.output_dir")
    hf_dir = resolve_hf_dir(cfg.model.hf_dir)
    hf_config = read_hf_config(hf_dir)
    hf_arch(hf_config, source=str(hf_dir / "config.json"))
    validate(cfg, hf_config, world_size=world_size)
    check_files(cfg.data)
    stages = resolve_stages(cfg)
    point = resume.latest_checkpoint(cfg.trainer.output_dir)
    if point is not None:
        resume.check_changes(point, resume.config_changes(point, cfg, hf_config))
    finished = resume.nothing_to_do(point, total_steps(stages))
    if not finished:
        check_memory_plan(cfg, world_size, report)
    return finished


def check_memory_plan(cfg: ProRLConfig, world_size: int, report: bool = True) -> None:
    """On a GPU: refuse a config whose plan exceeds this GPU (megatron_prorl/plan), in one line
    naming the stage, phase and shortfall, unless trainer.ignore_memory_plan. Without CUDA the
    plan (as this machine would run it) is only reported. ``report``: print the verdicts (one
    rank of a launched job does)."""
    import importlib.util

    import torch

    from megatron_prorl.plan.inputs import Target
    from megatron_prorl.plan.memory import GiB
    from megatron_prorl.plan.report import plan_config, verdict
    from megatron_prorl.runtime.accelerator import resolve_transformer_impl

    on_gpu = torch.cuda.is_available()
    te = resolve_transformer_impl(cfg.model) == "transformer_engine"
    fused = any(importlib.util.find_spec(m) is not None for m in ("transformer_engine", "apex"))
    gpu_bytes = torch.cuda.mem_get_info()[1] if on_gpu else 0
    plans = plan_config(cfg, Target(gpu_bytes=gpu_bytes, gpus=world_size, on_gpu=on_gpu, transformer_engine=te,
                                    fused_adam=fused, runtime_overheads=on_gpu))
    if not on_gpu:
        for p in plans if report else ():
            print(f"prorl: memory plan: stage {p.name}: peak {p.peak / GiB:.2f} GiB per device in {p.peak_phase} "
                  f"(`prorl plan` for the table)", file=sys.stderr)
        return
    for p in plans:
        if p.fits:
            continue
        message = (f"memory plan: stage {p.name!r} does not fit this GPU: {p.peak_phase} needs "
                   f"{p.peak / GiB:.2f} GiB of {gpu_bytes / GiB:.2f} GiB ({p.shortfall / GiB:.2f} GiB short); "
                   "`prorl plan` shows the terms and what would fit")
        if not cfg.trainer.ignore_memory_plan:
            raise UserError(message + "; trainer.ignore_memory_plan=true runs it anyway")
        if report:
            print(f"prorl: warning: {message} (trainer.ignore_memory_plan=true: running anyway)", file=sys.stderr)
    for p in plans if report else ():
        print(f"prorl: memory plan: stage {p.name}: {verdict(p)}", file=sys.stderr)


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
        kept = (f"latest checkpoint {summary['checkpoint']}; the same command resumes it" if summary.get("checkpoint")
                else "no step checkpointed yet; the same command starts it")
        print(f"\nProRL run stopped by {stopped_by} at step {steps} of {summary['total_steps']} ({kept}), "
              f"{len(summary['resets'])} reference resets")
    else:
        print(f"\nProRL run finished: {steps} steps, {len(summary['resets'])} reference resets")
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
    """Exit code 0 when the run finished or was stopped by SIGTERM / SIGUSR1 (a scheduler's
    stop: it requeues and the run resumes), 130 when stopped by Ctrl-C (SIGINT), as a shell
    reports an interrupted command, so ``prorl train ... && next`` does not go on with an
    unfinished run; checkpointed either way."""
    from megatron_prorl.runtime import process
    from megatron_prorl.runtime.distributed import detect_env, under_launcher
    from megatron_prorl.runtime.run_lock import RunLock
    from megatron_prorl.train.validate import load_run_config

    process.catch_stop_signals(second_interrupt_kills=True)  # first: one sent during start-up is not lost
    cfg = load_run_config(args.config, args.overrides)  # fail fast, before any process starts
    mp = cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    env = detect_env()
    launched = under_launcher()
    nproc = env.world_size if launched else args.nproc or mp
    finished = check_before_start(cfg, nproc, report=env.rank == 0)
    if finished:
        if env.rank == 0:
            print(finished)
        return 0
    if launched or nproc == 1:
        # Under torchrun/srun the first rank holds the run directory for the job.
        summary = _train_rank(args.config, args.overrides, hold_lock=env.rank == 0)
    else:
        from megatron_prorl.runtime.launch import spawn

        if process.stop_signal():  # before any rank started: nothing to stop but this process
            raise KeyboardInterrupt  # what main() says of an interrupted start (a SIGTERM now is rare)
        with RunLock(cfg.trainer.output_dir):  # before any rank starts: a second run is refused at once
            try:
                summary = spawn(_train_rank, nproc, args.config, args.overrides, False, timeout=None,
                                catch_stop_signals=True, heartbeat_timeout=cfg.parallel.heartbeat_timeout_s)[0]
            except RunFailure as exc:
                raise RunFailure(f"{exc}; {_resume_point(cfg.trainer.output_dir)}") from exc
    if env.rank == 0:  # under srun or torchrun every rank returns here
        _print_summary(summary, cfg.trainer.output_dir)
        write_summary(summary, cfg.trainer.output_dir)
    return 130 if summary.get("stopped_by") == "SIGINT" else 0


def _resume_point(run_dir: str) -> str:
    """What a rerun of a failed run resumes from."""
    from checkpoint_convert.checkpoint import resolve_checkpoint
    from checkpoint_convert.errors import ConversionError

    try:
        ckpt, _ = resolve_checkpoint(run_dir)
    except ConversionError:
        return "no checkpoint yet: the same command starts afresh"
    return f"the latest checkpoint is {ckpt.name}: the same command resumes from it"


def write_summary(summary: dict, run_dir: str) -> None:
    """RUN_DIR/summary.json; a disk that fills up now is one line: the run is checkpointed."""
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)
    except OSError as exc:
        raise UserError(f"{path}: not written ({exc.strerror or exc}); the run itself is checkpointed") from exc


def plan(args) -> int:
    """`prorl plan`: exit 0 when every stage fits, 1 when one does not (2: bad input)."""
    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.plan.inputs import Target, model_config, parse_bytes
    from megatron_prorl.plan.memory import Shape
    from megatron_prorl.plan.report import plan_config, render, to_json
    from megatron_prorl.train.validate import load_run_config, validate

    cfg = load_run_config(args.config, args.overrides)
    if args.gpus < 1:
        raise UserError(f"--gpus={args.gpus}: must be >= 1")
    target = Target(gpu_bytes=parse_bytes(args.gpu_memory), gpus=args.gpus)
    hf_config, source = model_config(cfg.model.hf_dir)
    shape = Shape.of(hf_arch(hf_config, source=source))
    validate(cfg, hf_config, world_size=args.gpus)
    plans = plan_config(cfg, target, shape)
    print(to_json(plans, target.gpu_bytes) if args.json else render(cfg, target, plans, shape, args.config))
    return 0 if all(p.fits for p in plans) else 1


def plot(args) -> int:
    from megatron_prorl.train.plot import main as plot_main

    return plot_main([args.run_dir] + (["--out", args.out] if args.out else []))


def build_parser() -> argparse.ArgumentParser:
    from megatron_prorl.data import prepare

    from megatron_prorl.train import plot as plot_module

    parser = argparse.ArgumentParser(prog="prorl", description="ProRL on Megatron-Core")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version_line()}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run the ProRL loop from a YAML config",
                       description="Run the ProRL loop from a YAML config; rerun the same command to resume. "
                                   "Ctrl-C finishes the step, checkpoints and exits (130); twice stops at once.")
    t.add_argument("config", help="YAML config, e.g. configs/tiny_cpu.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rollout.n=8 (default: none)")
    t.add_argument("--nproc", type=int, default=None,
                   help="local processes to start when not under torchrun/srun (default: TP x PP)")
    t.add_argument("--debug", action="store_true", help="show the traceback of an error in the input")
    t.set_defaults(func=train)
    pl = sub.add_parser("plan", help="GPU memory per stage and phase of a config (needs only the model's "
                                     "config.json): does it fit, and what would")
    pl.add_argument("config", help="YAML config, e.g. configs/prorl_1p5b_4node.yaml")
    pl.add_argument("overrides", nargs="*", help="key=value overrides; model.hf_dir= a directory with a "
                                                 "config.json, or the config.json itself (default: none)")
    pl.add_argument("--gpu-memory", default="81559MiB",
                    help="memory of one GPU (default: an H100 80GB as NVML reports it, 81559MiB)")
    pl.add_argument("--gpus", type=int, default=8, help="GPUs of the run (world size; default 8, one node)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument("--debug", action="store_true", help="show the traceback of an error in the input")
    pl.set_defaults(func=plan)
    p = sub.add_parser("plot", help="write PNG charts of a run's metrics")
    plot_module.add_arguments(p)
    p.set_defaults(func=plot)
    d = sub.add_parser("data", help="training data").add_subparsers(dest="data_command", required=True)
    dp = d.add_parser("prepare", help="write the paper config's data files from ProRL's public datasets")
    prepare.add_arguments(dp)
    dp.set_defaults(func=prepare.run)
    sub.add_parser("eval", add_help=False,
                   help="evaluate a model (pass@k, majority@k), compare checkpoints, Creativity Index; "
                        "`prorl eval --help`")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``, with ``key=value`` overrides accepted after the flags too
    (``prorl plan CONFIG --gpus 32 rollout.n=8``): argparse stops filling a positional list at
    the first flag."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# What Ctrl-C leaves, per command (each resumes where it stopped).
INTERRUPTED = {
    "train": "interrupted before the run started; nothing to resume, the same command starts it",
    "eval": "interrupted; the finished chunks are kept in --out's samples.jsonl and the same command resumes",
    "data": "interrupted; the files finished so far are kept (--out's prepared.json) and the same command goes on",
}


def main(argv: list[str] | None = None) -> int:
    from megatron_prorl.runtime import process

    argv = sys.argv[1:] if argv is None else argv
    try:
        with process.interrupt_once():  # `prorl train` catches it itself (finish the step, checkpoint)
            return _run(argv)
    except KeyboardInterrupt:
        command = " ".join(["prorl", *argv[:2 if argv[:1] == ["data"] else 1]])
        print(f"{command}: {INTERRUPTED.get(argv[0] if argv else '', 'interrupted')}", file=sys.stderr)
        return 130


def _run(argv: list[str]) -> int:
    try:
        load_plugins()
    except UserError as exc:
        print(f"prorl: error: {exc}", file=sys.stderr)
        return 2
    if argv[:1] == ["eval"]:  # its own parser, with subcommands (megatron_prorl/eval/cli.py)
        from megatron_prorl.eval.cli import main as eval_main

        return eval_main(argv[1:])
    args = parse_args(build_parser(), argv)
    try:
        return args.func(args)
    except (*USER_ERRORS, RunFailure) as exc:
        if getattr(args, "debug", False):
            raise
        hint = env_hint(args.config, str(exc)) if args.command == "train" and not isinstance(exc, RunFailure) else ""
        print(f"prorl: error: {exc}{hint}", file=sys.stderr)
        return 1 if isinstance(exc, RunFailure) else 2


if __name__ == "__main__":
    sys.exit(main())
