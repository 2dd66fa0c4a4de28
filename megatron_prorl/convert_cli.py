"""prorl-convert: Hugging Face <-> Megatron checkpoint conversion, and its verification.

    prorl-convert hf-to-megatron --hf-dir DIR --out DIR --tp N --pp M [--dtype bf16]
    prorl-convert megatron-to-hf --ckpt DIR --out DIR [--dtype bf16] [--max-shard-size 5GB]
    prorl-convert verify --hf-dir DIR --ckpt DIR [--tolerance 1e-3]

The conversions are checkpoint_convert's own command line (usable without this package);
this command adds ``verify``, which runs the Megatron model, ``builtin:NAME`` model
directories, and to every exported model directory the prompt format the model was trained
with and a model card (:mod:`megatron_prorl.data.model_card`). verify exits 1 when the logits
differ by more than the tolerance.
"""

from __future__ import annotations

# `verify` imports Megatron-Core when it runs: the conversions and --help do not need it.
import sys
from pathlib import Path
from typing import Optional, Sequence

from checkpoint_convert import cli
from checkpoint_convert.errors import ConversionError
from megatron_prorl import builtin, version_line
from megatron_prorl.builtin import BuiltinNotFound
from megatron_prorl.config import ConfigError


def build_parser():
    parser, sub = cli.build_parser(prog="prorl-convert")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version_line()}")
    ver = sub.add_parser("verify", help="max |logit difference| between a HF model and a checkpoint")
    ver.add_argument("--hf-dir", required=True, help="HF model directory (or builtin:NAME)")
    ver.add_argument("--ckpt", required=True, help="the checkpoint to compare with it (a directory with meta.json)")
    ver.add_argument("--tolerance", type=float, default=1e-3, help="exit 1 above this (default: %(default)s)")
    ver.add_argument("--seq-len", type=int, default=32, help="tokens per random sequence (default: %(default)s)")
    ver.add_argument("--batch", type=int, default=2, help="random sequences compared (default: %(default)s)")
    ver.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default: %(default)s)")
    return parser


def verify(args) -> int:
    from megatron_prorl.models.verify import max_logit_diff

    diff = max_logit_diff(args.hf_dir, args.ckpt, seq_len=args.seq_len, batch=args.batch, seed=args.seed)
    ok = diff <= args.tolerance
    print(f"max |logit diff| = {diff:.3e} (tolerance {args.tolerance:.1e}): {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


def export(args) -> int:
    """megatron-to-hf, then the exported directory's prompt format and model card."""
    from checkpoint_convert.checkpoint import resolve_checkpoint
    from megatron_prorl.data.model_card import PROMPT_FILE, write_model_card

    code = cli.convert(args)
    card = write_model_card(args.out, resolve_checkpoint(args.ckpt)[0])
    print(f"model card: {card}; prompt format: {Path(args.out) / PROMPT_FILE}")
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging()
    try:
        if getattr(args, "hf_dir", None):
            args.hf_dir = str(builtin.resolve(args.hf_dir))
        if args.command == "verify":
            return verify(args)
        return export(args) if args.command == "megatron-to-hf" else cli.convert(args)
    except (ConfigError, ConversionError, BuiltinNotFound) as exc:
        print(f"prorl-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prorl-convert: interrupted; an unfinished conversion leaves nothing in --out (the same command "
              "starts it again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
