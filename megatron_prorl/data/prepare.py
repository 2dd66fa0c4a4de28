"""``prorl data prepare``: the training data of configs/prorl_1p5b_4node.yaml in one command.

    prorl data prepare --out DIR [--only DOMAIN ...] [--source DOMAIN=PATH_OR_HUB ...]
                       [--benchmark FORMAT=PATH_OR_HUB ...] [--config CONFIG]
                       [--logic-train-size N] [--logic-val-size N]

writes, in the ``prorl`` row format (:mod:`megatron_prorl.data.schema`), one JSON Lines file
per domain, the names the config reads from ``${PRORL_DATA}``:

=============== ============================================================== ==================
file            made from                                                      converter
=============== ============================================================== ==================
math.jsonl      agentica-org/DeepScaleR-Preview-Dataset                        deepscaler
code.jsonl      PRIME-RL/Eurus-2-RL-Data (its code rows)                       eurus2
stem.jsonl      EricLu/SCP-116K (rows with a checkable answer)                 scp116k
logic.jsonl     Reasoning Gym, generated offline (:mod:`.reasoning_gym_mix`)   -
ifeval.jsonl    nvidia/Llama-Nemotron-Post-Training-Dataset, RL                llama_nemotron_if
                instruction_following
logic_val.jsonl Reasoning Gym validation problems and held-out tasks           -
=============== ============================================================== ==================

Each public source is read through ``datasets`` by hub name (its cache, or the hub), or from a
local copy (``--source math=/data/deepscaler.json``: JSON, JSON Lines, Parquet or a saved
``datasets`` directory, in the source's own format). Rows are converted and counted by
:func:`~megatron_prorl.data.loader.load_source`; then every problem that is also in a
validation set (what the config's ``data.val`` names) or in a benchmark file given with
``--benchmark`` is removed, by normalised text (:func:`~megatron_prorl.data.heldout.problem_key`).
The validation file is written first, since that check needs it, whatever ``--only`` selects,
when the config's ``data.val`` reads it (the 1.5B config does: it is that run's validation set
and what is held out of every training file); with a ``--config`` whose ``data.val`` does not
name it, it is not written.

Resumable: each file is written to a temporary name, flushed to disk and renamed, then
recorded in ``DIR/prepared.json`` with the inputs it was made from (source, file size and
time, sizes, the held-out set's digest). A rerun skips a file that is recorded with the same
inputs; an interrupted run leaves no file under a final name that is not complete.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from megatron_prorl import domains
from megatron_prorl.config import ConfigError, DataSourceConfig, load_config
from megatron_prorl.data import heldout
from megatron_prorl.data import reasoning_gym_mix as mix
from megatron_prorl.data.formats import FORMATS
from megatron_prorl.data.loader import BadRowWarning, Source, check_config, load_source, load_split, save_rows
from megatron_prorl.data.readers import HUB_PREFIX, HubUnreachable
from megatron_prorl.registry import resolve

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prorl_1p5b_4node.yaml"
MANIFEST = "prepared.json"
LOGIC_VAL_FILE = "logic_val.jsonl"
HELD_OUT_REASON = "also in val or a benchmark"


def default_domains() -> tuple[str, ...]:
    """The domains whose record says where their data comes from (the paper's five): what
    ``prorl data prepare`` writes unless ``--only`` says otherwise."""
    return tuple(n for n in domains.in_report_order(domains.names())
                 if domains.get(n).prepare.source or domains.get(n).prepare.generate)


def train_file(domain: str) -> str:
    return f"{domain}.jsonl"


class PrepareError(Exception):
    """A one-line error naming the file or value at fault."""


@dataclass
class Options:
    out: Path
    only: tuple[str, ...] = ()  # () : default_domains(), and the domains given a --source
    sources: dict[str, str] = field(default_factory=dict)  # domain -> local path or hf: spec
    benchmarks: list[tuple[str, str]] = field(default_factory=list)  # (format, local path or hf: spec)
    config: Path = DEFAULT_CONFIG
    logic_train_size: int = mix.TRAIN_SIZE
    logic_val_size: int = mix.VAL_SIZE


def prepare(opts: Options, echo: Callable[[str], None] = print) -> dict:
    """Write the files of ``opts.only`` (and the validation file) under ``opts.out``; returns
    the manifest."""
    _check(opts)
    data_cfg = _load_config(opts.config, opts.out).data
    opts.out.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(opts.out / MANIFEST, echo)
    logic_inputs = {"mix": mix.fingerprint(), "seed": data_cfg.seed}
    if any(Path(src.path).resolve() == (opts.out / LOGIC_VAL_FILE).resolve() for src in data_cfg.val):
        _step(manifest, LOGIC_VAL_FILE, dict(logic_inputs, size=opts.logic_val_size), None, echo,
              partial(_generated, "val", opts.logic_val_size, data_cfg.seed, domains.get("logic").prepare.generate))
    else:
        echo(f"{LOGIC_VAL_FILE}: not written (the config's data.val does not read it)")
    held = _held_out(data_cfg, opts.benchmarks, echo)
    for domain in _selected(opts):
        how = domains.get(domain).prepare
        if how.generate:
            inputs = dict(logic_inputs, size=opts.logic_train_size)
            make = partial(_generated, "train", opts.logic_train_size, data_cfg.seed, how.generate)
        else:
            spec = opts.sources.get(domain, how.source)
            inputs = dict(_source_identity(spec), format=how.format)
            make = partial(_load, f"{domain} source {spec}", spec, how.format, domain, echo)
        _step(manifest, train_file(domain), dict(inputs, held_out=heldout.fingerprint(held)), held, echo, make)
    echo(f"prepared {opts.out}: " + ", ".join(f"{name} ({entry['rows']} rows)"
                                               for name, entry in sorted(manifest.entries.items())))
    return manifest.entries


# ----------------------------------------------------------------------------- steps

def _step(manifest: "_Manifest", name: str, inputs: dict, held: set[str] | None,
          echo: Callable[[str], None], make: Callable[[], Source]) -> None:
    path = manifest.root / name
    done = manifest.entries.get(name)
    if done and done["inputs"] == inputs and path.is_file():
        echo(f"{name}: complete already ({done['rows']} rows), skipped")
        return
    source = make()
    if held:
        source.drop_held_out(held, HELD_OUT_REASON)
    if not source.rows:
        raise PrepareError(f"{name}: no rows left ({source.summary()})")
    _write_atomically(path, lambda tmp: save_rows(source.rows, tmp))
    manifest.record(name, inputs, source)
    echo(f"{name}: {source.summary()}")


def _generated(split: str, size: int, seed: int, generate: str) -> Source:
    """Rows made by a domain's generator (``"module:function"``, called as ``(split, size, seed)``)."""
    with contextlib.redirect_stdout(io.StringIO()):  # bf's compiler prints a dot per program
        rows = resolve(generate)(split, size, seed)
    tasks = len({r.ground_truth["task"] for r in rows})
    return Source(f"Reasoning Gym {split} mix ({tasks} tasks)", "reasoning_gym", 1.0, rows)


def _load(what: str, spec: str, fmt: str, domain: str, echo: Callable[[str], None]) -> Source:
    """One source through load_source; its bad-row warnings are echoed, and any failure to read
    it (missing or unparsable file, Arrow or hub error) becomes one line naming the source."""
    datasets_log = logging.getLogger("datasets")
    level = datasets_log.level
    datasets_log.setLevel(logging.CRITICAL)  # it logs, over many lines, the failure reported here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadRowWarning)
        try:
            source = load_source(DataSourceConfig(path=spec, format=fmt, domain=domain))
        except HubUnreachable as exc:
            flag = f"--source {domain}=PATH" if domain else "a local file as --benchmark FORMAT=PATH"
            raise PrepareError(f"{what}: {exc.why}; give a local copy with {flag} (JSON, JSON Lines, Parquet or "
                               "a save_to_disk directory)") from None
        except Exception as exc:  # reported as the one-line error the CLI prints
            raise PrepareError(f"{what}: {_first_line(exc)}") from exc
        finally:
            datasets_log.setLevel(level)
    for warning in caught:
        echo(f"  {warning.message}")
    return source


def _held_out(data_cfg, benchmarks: list[tuple[str, str]], echo: Callable[[str], None]) -> set[str]:
    """Normalised problems of the config's validation sets and of the benchmark files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadRowWarning)
            sources = load_split(data_cfg, "val")
    except Exception as exc:
        raise PrepareError(f"data.val of the config: {_first_line(exc)}") from exc
    for fmt, spec in benchmarks:
        sources.append(_load(f"benchmark {spec}", spec, fmt, "", echo))
    keys = heldout.held_out_keys(r for s in sources for r in s.rows)
    echo(f"held out of training: {len(keys)} problems from "
         + ("; ".join(s.summary() for s in sources) or "no validation or benchmark set"))
    return keys


def _source_identity(spec: str) -> dict:
    """What a file made from ``spec`` depends on: the hub spec, or the local file's path, size
    and modification time."""
    if spec.startswith(HUB_PREFIX):
        return {"source": spec}
    path = Path(spec).resolve()
    stat = path.stat()
    return {"source": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# ----------------------------------------------------------------------------- files

def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a hidden temporary file next to ``path`` (same suffix), flush it to disk and
    rename it over ``path``: a reader never sees a partial file under the final name."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Manifest:
    """``DIR/prepared.json``: file name -> the inputs it was made from, its rows and counts."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self.root = path, path.parent
        self.entries: dict = {}
        if path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                echo(f"{path}: unreadable ({exc}); every file will be made again")

    def record(self, name: str, inputs: dict, source: Source) -> None:
        self.entries[name] = {"inputs": inputs, "rows": len(source.rows), "bad": source.bad,
                              "dropped": dict(source.dropped)}
        text = json.dumps(self.entries, indent=1, sort_keys=True)
        _write_atomically(self.path, lambda tmp: tmp.write_text(text))


# ----------------------------------------------------------------------------- checks

def _selected(opts: Options) -> list[str]:
    chosen = set(opts.only or default_domains() + tuple(opts.sources))
    return domains.in_report_order(chosen)


def _check(opts: Options) -> None:
    known = domains.names()
    for domain in opts.only:
        if domain not in known:
            raise PrepareError(f"--only {domain}: unknown domain (expected one of {', '.join(known)})")
    for domain, spec in opts.sources.items():
        if domain not in known:
            raise PrepareError(f"--source {domain}={spec}: unknown domain (expected one of {', '.join(known)})")
        if domains.get(domain).prepare.generate:
            raise PrepareError(f"--source {domain}={spec}: {domain} is generated "
                               f"({domains.get(domain).prepare.generate}) and reads no source")
        _check_local(f"--source {domain}={spec}", spec)
    for domain in _selected(opts):
        how = domains.get(domain).prepare
        if not (how.source or how.generate or domain in opts.sources):
            raise PrepareError(f"--only {domain}: {domain} has no default source; give one with --source {domain}=PATH")
    for fmt, spec in opts.benchmarks:
        if fmt not in FORMATS:
            raise PrepareError(f"--benchmark {fmt}={spec}: unknown format {fmt!r} (expected one of "
                               f"{', '.join(FORMATS)})")
        _check_local(f"--benchmark {fmt}={spec}", spec)
    for flag, size in (("--logic-train-size", opts.logic_train_size), ("--logic-val-size", opts.logic_val_size)):
        if size < 1:
            raise PrepareError(f"{flag} {size}: must be >= 1")
    if opts.out.exists() and not opts.out.is_dir():
        raise PrepareError(f"--out {opts.out}: not a directory")


def _check_local(what: str, spec: str) -> None:
    if not spec.startswith(HUB_PREFIX) and not Path(spec).exists():
        raise PrepareError(f"{what}: no such file or directory: {spec}")


def _load_config(path: Path, out: Path):
    """The config, with ${PRORL_DATA} resolving to ``out`` (its data.val may name files there);
    its data section checked (the rest is the training run's to check)."""
    previous = os.environ.get("PRORL_DATA")
    os.environ["PRORL_DATA"] = str(out)
    try:
        cfg = load_config(path)
        check_config(cfg.data)
        return cfg
    except ConfigError as exc:
        raise PrepareError(str(exc)) from None
    finally:
        if previous is None:
            del os.environ["PRORL_DATA"]
        else:
            os.environ["PRORL_DATA"] = previous


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="directory to write (the config's PRORL_DATA)")
    parser.add_argument("--only", nargs="+", metavar="DOMAIN", default=[],
                        help=f"domains to write (default: {', '.join(default_domains())}, and any given a --source)")
    parser.add_argument("--source", action="append", default=[], metavar="DOMAIN=PATH",
                        help="a local copy of a domain's public dataset, or another hub dataset as "
                             "hf:NAME[?name=CONFIG&split=SPLIT] (default: " +
                             ", ".join(f"{d}={domains.get(d).prepare.source}" for d in default_domains()
                                       if domains.get(d).prepare.source) + ")")
    parser.add_argument("--benchmark", action="append", default=[], metavar="FORMAT=PATH",
                        help="a benchmark file (or hf: dataset) in FORMAT (e.g. deepscaler for AIME, "
                             "llama_nemotron_if for IFEval) whose problems are removed from training; repeatable "
                             "(default: none)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="config whose data.val is held out of training (default: %(default)s)")
    parser.add_argument("--logic-train-size", type=int, default=mix.TRAIN_SIZE, metavar="N",
                        help="Reasoning Gym training problems (default: %(default)s)")
    parser.add_argument("--logic-val-size", type=int, default=mix.VAL_SIZE, metavar="N",
                        help="Reasoning Gym validation problems (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """``prorl data prepare``: 0, or 2 with a one-line error on stderr."""
    import sys

    try:
        prepare(Options(out=args.out, only=tuple(args.only), sources=dict(_pairs("--source", args.source)),
                        benchmarks=_pairs("--benchmark", args.benchmark), config=args.config,
                        logic_train_size=args.logic_train_size, logic_val_size=args.logic_val_size))
    except PrepareError as exc:
        print(f"prorl: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _pairs(flag: str, items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise PrepareError(f"{flag} {item}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs
