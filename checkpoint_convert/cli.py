"""The converter's command line: Hugging Face <-> Megatron checkpoint conversion.

    python -m checkpoint_convert hf-to-megatron --hf-dir DIR --out DIR --tp N --pp M [--dtype bf16]
    python -m checkpoint_convert megatron-to-hf --ckpt DIR --out DIR [--dtype bf16] [--max-shard-size 5GB]

Conversions run in this one process without Megatron-Core (see checkpoint_convert.convert for
why), print a summary line, and exit 2 with a message naming the file, tensor or field on
bad input. The installed ``prorl-convert`` command (megatron_prorl.convert_cli) is this
parser plus ``verify``, which runs the Megatron model.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from typing import Optional, Sequence

from checkpoint_convert import dtypes
from checkpoint_convert.errors import ConversionError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MiB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def build_parser(prog: str = "python -m checkpoint_convert"):
    """The parser and its subcommands' action (callers may add commands)."""
    parser = argparse.ArgumentParser(prog=prog, description="Hugging Face <-> Megatron checkpoint conversion")
    sub = parser.add_subparsers(dest="command", required=True)
    dtype = dict(choices=dtypes.NAMES, default=None, help="cast to this dtype (default: keep the source dtype)")
    bar = dict(action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)")

    h2m = sub.add_parser("hf-to-megatron", help="HF directory -> Megatron checkpoint")
    h2m.add_argument("--hf-dir", required=True, help="HF model directory (prorl-convert also takes builtin:NAME)")
    h2m.add_argument("--out", required=True, help="checkpoint directory to create")
    h2m.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default: %(default)s)")
    h2m.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default: %(default)s)")
    h2m.add_argument("--dtype", **dtype)
    h2m.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    h2m.add_argument("--progress", **bar)

    m2h = sub.add_parser("megatron-to-hf", help="Megatron checkpoint (any TP x PP) -> HF directory")
    m2h.add_argument("--ckpt", required=True,
                     help="a checkpoint directory (with model/, hf/, meta.json), or a training run directory, its "
                          "checkpoints/ directory or its latest pointer (the run's latest checkpoint)")
    m2h.add_argument("--out", required=True, help="HF directory to create")
    m2h.add_argument("--dtype", **dtype)
    m2h.add_argument("--max-shard-size", type=parse_size, default="5GB",
                     help="per safetensors file (default: %(default)s)")
    m2h.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    m2h.add_argument("--progress", **bar)

    return parser, sub


def setup_logging() -> None:
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    # torch.distributed.checkpoint's deprecations, raised from inside dist_checkpointing.
    warnings.filterwarnings("ignore", message=".*load_state_dict. is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("checkpoint_convert").setLevel(logging.INFO)


def convert(args) -> int:
    """Run the conversion ``args`` names; print its summary line."""
    # Late: the conversions import torch and Megatron-Core; --help and argument errors do not.
    if args.command == "hf-to-megatron":
        from checkpoint_convert.convert import hf_to_megatron

        summary = hf_to_megatron(args.hf_dir, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype,
                                 overwrite=args.overwrite, progress=args.progress)
    else:
        from checkpoint_convert.convert import megatron_to_hf

        summary = megatron_to_hf(args.ckpt, args.out, dtype=args.dtype, max_shard_bytes=args.max_shard_size,
                                 overwrite=args.overwrite, progress=args.progress)
    print(f"{summary.line()} -> {args.out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return convert(args)
    except ConversionError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
