"""prorl-convert: Hugging Face <-> Megatron checkpoint conversion, and its verification.

    prorl-convert hf-to-megatron --hf-dir DIR --out DIR --tp N --pp M [--dtype bf16]
    prorl-convert megatron-to-hf --ckpt DIR --out DIR [--dtype bf16] [--max-shard-size 5GB]
    prorl-convert verify --hf-dir DIR --ckpt DIR [--tolerance 1e-3]

The conversions are checkpoint_convert's own command line (usable without this package);
this command adds ``verify``, which runs the Megatron model, and ``builtin:NAME`` model
directories. verify exits 1 when the logits differ by more than the tolerance.
"""

from __future__ import annotations

# `verify` imports Megatron-Core when it runs: the conversions and --help do not need it.
import sys
from typing import Optional, Sequence

from checkpoint_convert import cli
from checkpoint_convert.errors import ConversionError
from megatron_prorl import builtin
from megatron_prorl.config import ConfigError


def build_parser():
    parser, sub = cli.build_parser(prog="prorl-convert")
    ver = sub.add_parser("verify", help="max |logit difference| between a HF model and a checkpoint")
    ver.add_argument("--hf-dir", required=True, help="HF model directory (or builtin:NAME)")
    ver.add_argument("--ckpt", required=True)
    ver.add_argument("--tolerance", type=float, default=1e-3, help="exit 1 above this (default 1e-3)")
    ver.add_argument("--seq-len", type=int, default=32)
    ver.add_argument("--batch", type=int, default=2)
    ver.add_argument("--seed", type=int, default=0)
    return parser


def verify(args) -> int:
    from megatron_prorl.models.verify import max_logit_diff

    diff = max_logit_diff(args.hf_dir, args.ckpt, seq_len=args.seq_len, batch=args.batch, seed=args.seed)
    ok = diff <= args.tolerance
    print(f"max |logit diff| = {diff:.3e} (tolerance {args.tolerance:.1e}): {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging()
    if getattr(args, "hf_dir", None):
        args.hf_dir = str(builtin.resolve(args.hf_dir))
    try:
        return verify(args) if args.command == "verify" else cli.convert(args)
    except (ConfigError, ConversionError) as exc:
        print(f"prorl-convert: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
