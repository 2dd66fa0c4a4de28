"""Safetensors I/O by hand: a lazy reader of HF weight directories and a streaming writer.

:class:`HFWeights` parses the headers and hands out the rows of a tensor asked for, two ways:
``read`` ``pread``s exactly those bytes into a fresh tensor (a TP rank reads only its own rows,
and nothing of the file stays mapped, as it would with safetensors' ``safe_open``); ``map``
returns a copy-on-write memory map of them, for tensors that are handed on unchanged (the
offline converter gives them to the checkpoint writer, which then reads the page cache
directly instead of a copy made first). :class:`SafetensorsWriter` plans the files from names,
shapes and dtypes up front, so it can write each header first and then stream tensors one at
a time.

Format: an 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}``, then the raw tensor bytes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from checkpoint_convert.arch import HFArch
from checkpoint_convert.buckets import nbytes, plan_buckets
from checkpoint_convert.errors import ConversionError
from checkpoint_convert.mapping import hf_shapes, is_ignored_hf_name

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# numpy stand-ins of the same width, for memory maps (numpy has no bfloat16).
_NUMPY = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16,
          torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
          torch.uint8: np.uint8, torch.bool: np.bool_}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER = 100 << 20
# One write() per 8 MiB: a single write of a large tensor was 3-8x slower on the machines
# measured (bench/bench_convert.py).
_WRITE_CHUNK = 8 << 20
_IOV_MAX = 1024  # buffers per preadv call (Linux's IOV_MAX)


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, checked against the file's size."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= _MAX_HEADER:
                raise ConversionError(f"{path}: not a safetensors file (header length {length})")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: corrupt safetensors header ({exc})") from None
    start, size = 8 + length, path.stat().st_size
    infos = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta.get("dtype") not in DTYPES:
            raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}")
        dtype, shape = DTYPES[meta["dtype"]], tuple(meta["shape"])
        begin, end = meta["data_offsets"]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise ConversionError(f"{path}: tensor {name!r} spans {end - begin} bytes, its shape {shape} "
                                  f"and dtype {meta['dtype']} need {nbytes}")
        if start + end > size:
            raise ConversionError(f"{path}: truncated ({size} bytes; tensor {name!r} ends at byte {start + end})")
        infos[name] = TensorInfo(path, dtype, shape, start + begin, nbytes)
    return infos


class HFWeights:
    """The tensors of a HF model directory (``model.safetensors`` or a sharded index), read lazily."""

    def __init__(self, hf_dir: os.PathLike):
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_FILE
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConversionError(f"{index}: not a safetensors index ({exc!r})") from None
            headers = {f: read_header(self.dir / f) for f in sorted(set(weight_map.values()))}
            self.tensors = {}
            for name, f in weight_map.items():
                if name not in headers[f]:
                    raise ConversionError(f"{index}: maps {name!r} to {f}, which has no such tensor")
                self.tensors[name] = headers[f][name]
        elif (self.dir / SINGLE_FILE).is_file():
            self.tensors = read_header(self.dir / SINGLE_FILE)
        else:
            others = sorted(p.name for p in self.dir.glob("*.bin"))
            hint = f" (found {', '.join(others)}: only safetensors weights are supported)" if others else ""
            raise ConversionError(f"{self.dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
        self._fds: dict[Path, int] = {}

    def __enter__(self) -> "HFWeights":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def dtypes(self, names) -> set[torch.dtype]:
        return {self.tensors[n].dtype for n in names}

    def validate(self, arch: HFArch) -> None:
        """Every tensor the config implies is present with its shape; nothing unknown is present."""
        expected = hf_shapes(arch)
        missing = [n for n in expected if n not in self.tensors]
        if missing:
            raise ConversionError(f"{self.dir}: {len(missing)} tensor(s) of a {arch.family} model with this "
                                  f"config.json are missing, e.g. {missing[:3]}")
        unknown = [n for n in self.tensors if n not in expected and not is_ignored_hf_name(n, arch)]
        if unknown:
            raise ConversionError(f"{self.dir}: tensor(s) {unknown[:3]} are not part of a {arch.family} model "
                                  "with this config.json (unsupported feature, or the wrong config?)")
        for name, shape in expected.items():
            info = self.tensors[name]
            if info.shape != shape:
                raise ConversionError(f"{info.file}: tensor {name!r} has shape {info.shape}, config.json "
                                      f"implies {shape}")

    def _locate(self, name: str, rows: Optional[slice]) -> tuple[TensorInfo, tuple[int, ...], int, int]:
        """(info, shape of the rows, byte offset, byte count) of rows ``rows`` of ``name``."""
        try:
            info = self.tensors[name]
        except KeyError:
            raise ConversionError(f"{self.dir}: no tensor {name!r}") from None
        if not info.shape:
            return info, (), info.offset, info.nbytes
        n = info.shape[0]
        lo, hi, step = (rows or slice(None)).indices(n)
        if step != 1:
            raise ValueError(f"row slices must be contiguous, got {rows}")
        hi = max(lo, hi)
        row_bytes = info.nbytes // n if n else 0
        return info, (hi - lo, *info.shape[1:]), info.offset + lo * row_bytes, (hi - lo) * row_bytes

    def read(self, name: str, rows: Optional[slice] = None) -> torch.Tensor:
        """Rows ``rows`` (a slice of dim 0; all for None) of tensor ``name``, in its stored dtype."""
        info, shape, offset, nbytes = self._locate(name, rows)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        self._pread(info.file, buf, offset)
        return buf.view(info.dtype).reshape(shape)

    def map(self, name: str, rows: Optional[slice] = None) -> torch.Tensor:
        """Like :meth:`read`, as a copy-on-write memory map of the file (which must not change)."""
        info, shape, offset, nbytes = self._locate(name, rows)
        if nbytes == 0:
            return torch.empty(shape, dtype=info.dtype)
        array = np.memmap(info.file, dtype=_NUMPY[info.dtype], mode="c", offset=offset,
                          shape=(nbytes // info.dtype.itemsize,))
        return torch.from_numpy(array).view(info.dtype).reshape(shape)

    def _pread(self, path: Path, buf: torch.Tensor, offset: int) -> None:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        pread_exact(self._fds[path], [memoryview(buf.numpy())], offset, path)


def pread_exact(fd: int, buffers: list[memoryview], offset: int, path: os.PathLike) -> None:
    """Fill the writable byte ``buffers``, in order, from ``fd`` at ``offset`` (``path`` names
    it in errors): at most IOV_MAX buffers a call, short reads resumed."""
    buffers = [b for b in buffers if len(b)]
    while buffers:
        n = os.preadv(fd, buffers[:_IOV_MAX], offset)
        if n == 0:
            raise ConversionError(f"{path}: unexpected end of file at byte {offset}")
        offset += n
        while buffers and n >= len(buffers[0]):
            n -= len(buffers[0])
            buffers = buffers[1:]
        if n:
            buffers = [buffers[0][n:], *buffers[1:]]


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class SafetensorsWriter:
    """Writes tensors known in advance (name, shape, dtype; in that order) as HF sharded safetensors.

    Files hold consecutive tensors up to ``max_shard_bytes`` each (a larger tensor gets a file of
    its own); one file is ``model.safetensors``, several come with ``model.safetensors.index.json``.
    Only the tensor being written is in memory.
    """

    def __init__(self, out_dir: os.PathLike, entries: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int):
        self.dir = Path(out_dir)
        sizes = [(i, nbytes(shape, dtype)) for i, (_, shape, dtype) in enumerate(entries)]
        groups = [[entries[i] for i in indices] for indices in plan_buckets(sizes, max_shard_bytes)] or [[]]
        self._plan = [(file, group) for file, group in zip(shard_file_names(len(groups)), groups)]
        self._order = [(file, name, shape, dtype) for file, group in self._plan for name, shape, dtype in group]
        self._next = 0
        self._file = None
        self.total_bytes = sum(size for _, size in sizes)

    def _open(self, file: str) -> None:
        group = dict(self._plan)[file]
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in group:
            size = nbytes(shape, dtype)
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self._file = open(self.dir / file, "wb")
        self._file.write(len(raw).to_bytes(8, "little") + raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise ValueError(f"unexpected tensor {name!r}: all planned tensors were written")
        file, want, shape, dtype = self._order[self._next]
        if name != want or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"expected {want} {shape} {dtype}, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        if self._file is None:
            self._open(file)
        data = memoryview(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        for start in range(0, len(data), _WRITE_CHUNK):  # measured: chunked writes are faster
            self._file.write(data[start:start + _WRITE_CHUNK])
        self._next += 1
        if self._next == len(self._order) or self._order[self._next][0] != file:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._next != len(self._order):
            raise ValueError(f"{len(self._order) - self._next} planned tensor(s) were not written")
        if len(self._plan) > 1:
            weight_map = {name: file for file, group in self._plan for name, _, _ in group}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
