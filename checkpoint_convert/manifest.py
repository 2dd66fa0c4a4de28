"""Checkpoint manifests: every file of a checkpoint with its size and a fast checksum.

``manifest.json`` is written last, once every other file is complete, so a checkpoint with a
manifest was finished; verifying it before anything is loaded turns a truncated, missing or
bit-flipped file into an error naming that file, instead of a traceback from deep inside a
reader or, worse, a silent resume from damaged tensors.

Checksums are xxHash's XXH3-64 over memory-mapped files (over 10 GB/s per core from the page
cache: the manifest costs a small fraction of a save or a load, see bench/bench_checkpoint.py).
Hashing and verifying split the files over the ranks of a job when torch.distributed is
initialised (:func:`write_manifest` and :func:`verify_manifest` are then collective), so a large
checkpoint is read once, in parallel.
"""

from __future__ import annotations

import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

import torch.distributed as dist
import xxhash

from checkpoint_convert.errors import ConversionError

MANIFEST = "manifest.json"
FORMAT = "megatron-prorl-manifest"
_THREADS = 4  # xxhash releases the GIL: a few threads keep a fast disk busy
# Below this many bytes, starting the threads costs more than hashing on one (measured on the
# tiny default's checkpoint, 2 MB in 26 files: 8.3 ms with threads, 3.6 ms without).
_THREADS_FROM = 64 << 20
_MAP_FROM = 4 << 20


class CheckpointDamaged(ConversionError):
    """A checkpoint file is missing, truncated or changed since its manifest was written."""


def file_digest(path: Path) -> tuple[int, str]:
    """(size, XXH3-64 hex digest) of a file, hashed through a memory map: no copy out of the
    page cache (measured here: 14 GB/s a thread, against 2.5 GB/s reading it into buffers)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size < _MAP_FROM:  # setting up a map costs more than copying a small file
            return size, xxhash.xxh3_64(f.read()).hexdigest()
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            return size, xxhash.xxh3_64(m).hexdigest()


def _files(ckpt_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def _my_share(items: list, ranks: bool) -> list:
    """Round-robin share of ``items`` for this rank (all of them outside torch.distributed)."""
    if not (ranks and dist.is_initialized()):
        return items
    return items[dist.get_rank()::dist.get_world_size()]


def _gather(part: list, ranks: bool) -> list:
    if not (ranks and dist.is_initialized()):
        return part
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return [x for p in parts for x in p]


def _parallel(fn, items: list, nbytes: int) -> list:
    """``fn`` over ``items`` (``nbytes`` to read in all), on a few threads when there is enough
    to share."""
    if nbytes < _THREADS_FROM or len(items) < 2:
        return list(map(fn, items))
    with ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(fn, items))


def _digests(ckpt_dir: Path, names: Iterable[str]) -> list[tuple[str, int, str]]:
    names = list(names)
    nbytes = sum((ckpt_dir / n).stat().st_size for n in names)
    return [(n, *d) for n, d in zip(names, _parallel(lambda n: file_digest(ckpt_dir / n), names, nbytes))]


def write_manifest(ckpt_dir: os.PathLike, ranks: bool = True) -> dict:
    """Hash every file under ``ckpt_dir`` and write ``manifest.json`` (fsynced) last.
    Collective when ``ranks`` and torch.distributed is initialised; the first rank writes it."""
    ckpt_dir = Path(ckpt_dir)
    names = _files(ckpt_dir) if not (ranks and dist.is_initialized()) or dist.get_rank() == 0 else None
    if ranks and dist.is_initialized():
        holder = [names]
        dist.broadcast_object_list(holder, src=0)
        names = holder[0]
    entries = _gather(_digests(ckpt_dir, _my_share(names, ranks)), ranks)
    body = {"format": FORMAT, "version": 1, "hash": "xxh3_64",
            "files": {n: {"size": size, "xxh3_64": digest} for n, size, digest in sorted(entries)}}
    if not (ranks and dist.is_initialized()) or dist.get_rank() == 0:
        tmp = ckpt_dir / f".{MANIFEST}.tmp"
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ckpt_dir / MANIFEST)
    return body


def read_manifest(ckpt_dir: os.PathLike) -> Optional[dict]:
    """The manifest's file table, or None when the checkpoint has none (written before
    manifests existed). A manifest that does not parse is damage."""
    path = Path(ckpt_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        if body.get("format") != FORMAT or not isinstance(body.get("files"), dict):
            raise ValueError("not a manifest of this format")
    except (ValueError, OSError) as exc:
        raise CheckpointDamaged(f"{path}: unreadable manifest ({exc})") from None
    return body["files"]


def check_file(ckpt_dir: Path, name: str, want: dict) -> Optional[str]:
    """Why file ``name`` does not match its manifest entry ``want``; None when it does."""
    path = ckpt_dir / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size != want["size"]:
        return f"{path}: {size} bytes, the manifest says {want['size']} (truncated or overwritten)"
    if file_digest(path)[1] != want["xxh3_64"]:
        return f"{path}: contents changed since the checkpoint was written (checksum mismatch)"
    return None


def verify_manifest(ckpt_dir: os.PathLike, only: Optional[Iterable[str]] = None, ranks: bool = True) -> bool:
    """Check the files of ``ckpt_dir`` (those under the prefixes ``only``, or all) against its
    manifest; raise :class:`CheckpointDamaged` naming the first bad file. Returns False when the
    checkpoint has no manifest (nothing to verify). Collective like :func:`write_manifest`."""
    ckpt_dir = Path(ckpt_dir)
    files = read_manifest(ckpt_dir)
    if files is None:
        return False
    names = sorted(n for n in files if only is None or any(n == p or n.startswith(f"{p}/") for p in only))
    mine = _my_share(names, ranks)
    nbytes = sum(files[n]["size"] for n in mine)
    problems = [p for p in _parallel(lambda n: check_file(ckpt_dir, n, files[n]), mine, nbytes) if p]
    problems = sorted(_gather(problems, ranks))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointDamaged(problems[0] + more)
    return True
