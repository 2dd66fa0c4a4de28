"""dist_checkpointing's view of a GPTModel rank, and its torch_dist files, without Megatron-Core.

``GPTModel.sharded_state_dict()`` describes each local tensor as a piece of a global tensor:
decoder layers stack along a prepended layer axis (offset = global layer), TP shards are
fragments of their split axis, replicated tensors carry their TP rank in ``replica_id``, fc1 is
stored as two fragments (gate and up halves, axis fragmentation 2*tp), the vocabulary tensors
allow shape mismatch (another TP pads the vocabulary differently), and every linear layer has
an ``_extra_state`` object. :func:`layout_entries` reproduces exactly that for one parameter on
one rank as plain data (:func:`param_entries` turns it into Megatron-Core's objects, which the
tests compare with the live model's), so a single process can write the checkpoint of every
TP x PP rank at once.

:func:`write_torch_dist` and :class:`TorchDistReader` write and read the files of
dist_checkpointing's ``torch_dist`` backend directly (what ``dist_checkpointing.save`` of the
main replicas writes, and what it loads at any TP x PP): torch.distributed.checkpoint's
``.metadata`` (global shapes, chunks, where each chunk's ``torch.save`` record lies), the
``__0_<i>.distcp`` files, ``common.pt`` and ``metadata.json``. The offline converter uses them
instead of ``dist_checkpointing.save/load``: importing Megatron-Core costs seconds (its package
imports the whole model stack), its writer starts a helper process and forks workers, and its
loader re-reads the metadata on every call.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import pickle
import struct
import threading
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch

from checkpoint_convert.errors import ConversionError
from checkpoint_convert.mapping import (COLUMNS, FC1, LAYER_PREFIX, LINEAR_MODULES, REPLICATED, VOCAB, Layout, Param,
                                        checkpoint_key)
from checkpoint_convert.safetensors_io import pread_exact

# The linear module whose `_extra_state` travels with each weight.
_EXTRA_STATE_OF = {f"{m}.weight": m for m in LINEAR_MODULES}
# dist_checkpointing's files and the backend this module writes and reads.
CONFIG_FILE, COMMON_FILE, DCP_METADATA = "metadata.json", "common.pt", ".metadata"
BACKEND = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
           "common_backend": "torch", "common_backend_version": 1}
# Files (and writer threads) per checkpoint: dist_checkpointing's default for one rank.
WRITE_THREADS = 2


@dataclass(frozen=True)
class Fragment:
    """One rank's piece of a global tensor: a Megatron-Core ShardedTensor without its data."""

    key: str
    dtype: torch.dtype
    local_shape: tuple[int, ...]
    global_shape: tuple[int, ...]
    global_offset: tuple[int, ...]
    axis_fragmentations: tuple[int, ...]
    replica_id: tuple[int, ...]
    prepend_axis_num: int
    allow_shape_mismatch: bool = False

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """The stored chunk's shape: the local shape under the prepended (layer) axes."""
        return (1,) * self.prepend_axis_num + self.local_shape

    @property
    def is_main(self) -> bool:
        """Whether this rank's copy is the one written (replicas are skipped at save)."""
        return not any(self.replica_id)


@dataclass(frozen=True)
class ExtraState:
    """A linear layer's ``_extra_state`` (None in the local spec): a ShardedObject without data."""

    key: str
    global_shape: tuple[int, ...]
    global_offset: tuple[int, ...]
    replica_id: tuple[int, ...]

    @property
    def unique_key(self) -> str:
        """Its key in the checkpoint, as ShardedObject.unique_key spells it."""
        return (f"{self.key}/shard_{'.'.join(map(str, self.global_offset))}_"
                f"{'.'.join(map(str, self.global_shape))}")

    @property
    def is_main(self) -> bool:
        return not any(self.replica_id)


LayoutEntry = Union[tuple[Fragment, ...], ExtraState]


def _fragment(key: str, dtype: torch.dtype, local_shape: tuple[int, ...], *rank_offsets: tuple[int, int, int],
              replica_id: tuple[int, ...], prepend_axis_num: int, allow_shape_mismatch: bool = False) -> Fragment:
    """ShardedTensor.from_rank_offsets: (axis, rank along it, fragments along it) -> global placement."""
    ndim = len(local_shape) + prepend_axis_num
    shape, offset, frags = [1] * prepend_axis_num + list(local_shape), [0] * ndim, [1] * ndim
    for axis, rank, fragments in rank_offsets:
        size = 1 if axis < prepend_axis_num else local_shape[axis - prepend_axis_num]
        shape[axis], offset[axis], frags[axis] = fragments * size, rank * size, fragments
    return Fragment(key, dtype, tuple(local_shape), tuple(shape), tuple(offset), tuple(frags), replica_id,
                    prepend_axis_num, allow_shape_mismatch)


def layout_entries(param: Param, layout: Layout, tp_rank: int, dtype: torch.dtype,
                   dp_rank: int = 0) -> dict[str, LayoutEntry]:
    """What ``param`` contributes to TP rank ``tp_rank``'s sharded state dict, keyed by local name.

    fc1 is the pair of fragments (gate_r, up_r) Megatron's swiglu factory builds; every other
    tensor is a single fragment.
    """
    key, name, shape = checkpoint_key(param), layout.local_name(param), layout.shard_shape(param)
    L, tp = layout.arch.num_layers, layout.tp
    layer_axis = ((0, param.layer, L),) if param.layer is not None else ()
    n = len(layer_axis)
    replica = (0, 0, dp_rank)
    if param.kind == FC1:
        half = (shape[0] // 2, *shape[1:])
        entry = tuple(_fragment(key, dtype, half, *layer_axis, (n, frag, 2 * tp), replica_id=replica,
                                prepend_axis_num=n) for frag in (tp_rank, tp_rank + tp))
    elif param.kind == REPLICATED:
        entry = (_fragment(key, dtype, shape, *layer_axis, replica_id=(0, tp_rank, dp_rank), prepend_axis_num=n),)
    else:  # QKV, VOCAB (rows) or COLUMNS
        split_dim = n + (1 if param.kind == COLUMNS else 0)
        if param.tied_copy:
            replica = (1, 0, dp_rank)  # a copy of the first stage's embedding
        entry = (_fragment(key, dtype, shape, *layer_axis, (split_dim, tp_rank, tp), replica_id=replica,
                           prepend_axis_num=n, allow_shape_mismatch=param.kind == VOCAB),)
    entries: dict[str, LayoutEntry] = {name: entry}
    module = _EXTRA_STATE_OF.get(param.suffix)
    if module is not None:
        local = name[: -len(param.suffix)] + f"{module}._extra_state"
        entries[local] = ExtraState(f"{LAYER_PREFIX}{module}._extra_state", (L,) if n else (),
                                    (param.layer,) if n else (), (0, tp_rank, dp_rank))
    return entries


def param_entries(param: Param, layout: Layout, tp_rank: int, tensor, dp_rank: int = 0) -> dict:
    """:func:`layout_entries` as Megatron-Core's ShardedTensor / ShardedObject, holding ``tensor``
    (the rank's shard; for fc1 the pair (gate_r, up_r))."""
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

    tensors = tuple(tensor) if param.kind == FC1 else (tensor,)
    out = {}
    for name, entry in layout_entries(param, layout, tp_rank, tensors[0].dtype, dp_rank).items():
        if isinstance(entry, ExtraState):
            out[name] = ShardedObject(entry.key, None, entry.global_shape, entry.global_offset, entry.replica_id)
            continue
        sharded = []
        for frag, t in zip(entry, tensors, strict=True):
            if tuple(t.shape) != frag.local_shape:
                raise ValueError(f"{param.name}: TP rank {tp_rank} shard has shape {tuple(t.shape)}, "
                                 f"expected {frag.local_shape}")
            sharded.append(ShardedTensor(frag.key, t, frag.dtype, frag.local_shape, frag.global_shape,
                                         frag.global_offset, frag.axis_fragmentations, frag.replica_id,
                                         frag.prepend_axis_num, allow_shape_mismatch=frag.allow_shape_mismatch))
        out[name] = sharded if param.kind == FC1 else sharded[0]
    return out


# ---- torch_dist files -------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One record of a checkpoint: a fragment's tensor or an ``_extra_state``'s bytes, made on
    demand (by the writer thread that stores it, so cutting shards overlaps with writing)."""

    fqn: str
    fragment: Optional[Fragment]  # None: an object's bytes
    nbytes: int
    make: Callable[[], Union[torch.Tensor, bytes]]


@lru_cache(maxsize=None)
def extra_state_bytes() -> bytes:
    """The stored form of a local-spec ``_extra_state`` (dist_checkpointing saves [obj.data])."""
    buf = io.BytesIO()
    torch.save([None], buf)
    return buf.getvalue()


def _write_file(path: Path, records: list[Record], on_written: Callable[[int], None],
                failed: threading.Event) -> list:
    """Write ``records`` into one file; (record, offset, length) of each. Stops early once
    ``failed`` is set (another file failed: the checkpoint is abandoned)."""
    placed = []
    with open(path, "wb") as f:
        for rec in records:
            if failed.is_set():
                return placed
            data, offset = rec.make(), f.tell()
            if rec.fragment is None:
                f.write(data)
            else:
                frag = rec.fragment
                if tuple(data.shape) != frag.local_shape or data.dtype != frag.dtype:
                    raise ValueError(f"{rec.fqn}: got {tuple(data.shape)} {data.dtype}, expected "
                                     f"{frag.local_shape} {frag.dtype}")
                # torch.save writes a tensor's whole storage: hand it exactly the chunk's bytes.
                if not data.is_contiguous() or data.untyped_storage().nbytes() != data.nbytes:
                    data = data.clone()
                torch.save(data.view(frag.chunk_shape), f)
            placed.append((rec, offset, f.tell() - offset))
            on_written(rec.nbytes)
            del data
        f.flush()
        os.fsync(f.fileno())
    return placed


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_torch_dist(records: Iterable[Record], directory: os.PathLike,
                     on_written: Callable[[int], None] = lambda n: None) -> None:
    """Write ``records`` (main replicas only) as a dist_checkpointing torch_dist checkpoint into the
    existing, empty ``directory``: its files are fsynced; the caller renames the directory."""
    directory = Path(directory)
    # Largest first, each to the least filled file, as torch.distributed.checkpoint splits them.
    buckets: list[list[Record]] = [[] for _ in range(WRITE_THREADS)]
    sizes = [0] * WRITE_THREADS
    for rec in sorted(records, key=lambda r: -r.nbytes):
        i = sizes.index(min(sizes))
        buckets[i].append(rec)
        sizes[i] += rec.nbytes
    names = [f"__0_{i}.distcp" for i in range(WRITE_THREADS)]
    failed = threading.Event()

    def write(i: int) -> list:
        try:
            return _write_file(directory / names[i], buckets[i], on_written, failed)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(WRITE_THREADS + 1) as pool:
        # torch.distributed.checkpoint takes ~0.5 s to import and is needed only for the
        # metadata at the end: import it while the data is written.
        dcp = pool.submit(importlib.import_module, "torch.distributed.checkpoint")
        placed = list(pool.map(write, range(WRITE_THREADS)))
        dcp.result()

    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo
    from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                       MetadataIndex, StorageMeta, TensorProperties,
                                                       TensorStorageMetadata)

    state, storage = {}, {}
    for name, file_records in zip(names, placed):
        for rec, offset, length in file_records:
            frag = rec.fragment
            if frag is None:
                state[rec.fqn] = BytesStorageMetadata()
                index = MetadataIndex(rec.fqn)
            else:
                meta = state.setdefault(rec.fqn, TensorStorageMetadata(
                    TensorProperties(dtype=frag.dtype), torch.Size(frag.global_shape), []))
                index = MetadataIndex(rec.fqn, torch.Size(frag.global_offset), len(meta.chunks))
                meta.chunks.append(ChunkStorageMetadata(torch.Size(frag.global_offset), torch.Size(frag.chunk_shape)))
            storage[index] = _StorageInfo(name, offset, length)
    metadata = Metadata(state, storage_data=storage, version=CURRENT_DCP_VERSION,
                        storage_meta=StorageMeta(checkpoint_id=str(directory), save_id=str(uuid.uuid4())))
    _fsync_write(directory / DCP_METADATA, pickle.dumps(metadata))
    torch.save({}, directory / COMMON_FILE)  # no state outside the sharded tensors
    fsync_path(directory / COMMON_FILE)
    _fsync_write(directory / CONFIG_FILE, json.dumps(BACKEND).encode())


class TorchDistReader:
    """The global tensors of a torch_dist checkpoint, whatever TP x PP wrote them.

    ``tensors``: key -> (global shape, dtype). :meth:`read` assembles a tensor, or a range of
    its leading (layer) axis, from the chunks that cover it.
    """

    def __init__(self, directory: os.PathLike):
        self.dir = Path(directory)
        try:
            config = json.loads((self.dir / CONFIG_FILE).read_text())
        except FileNotFoundError:
            raise ConversionError(f"{self.dir}: not a dist_checkpointing directory (no {CONFIG_FILE})") from None
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{self.dir / CONFIG_FILE}: not valid JSON ({exc})") from None
        if config.get("sharded_backend") != "torch_dist":
            raise ConversionError(f"{self.dir / CONFIG_FILE}: sharded_backend={config.get('sharded_backend')!r}; "
                                  "only 'torch_dist' checkpoints are supported")
        if not (self.dir / DCP_METADATA).is_file():
            raise ConversionError(f"{self.dir}: no {DCP_METADATA} (an incomplete checkpoint?)")
        metadata = read_dcp_metadata(self.dir / DCP_METADATA)
        self.tensors = {k: (tuple(m.size), m.properties.dtype) for k, m in metadata.state_dict_metadata.items()
                        if hasattr(m, "chunks")}  # tensors, not objects (BytesStorageMetadata)
        sizes = {(k, tuple(c.offsets)): tuple(c.sizes) for k, m in metadata.state_dict_metadata.items()
                 if k in self.tensors for c in m.chunks}
        # key -> [(chunk offset, chunk shape, where its record lies)]
        self._chunks: dict[str, list] = {}
        for index, info in metadata.storage_data.items():
            if index.fqn in self.tensors:
                offset = tuple(index.offset)
                self._chunks.setdefault(index.fqn, []).append((offset, sizes[index.fqn, offset], info))
        self._fds: dict[str, int] = {}

    def __enter__(self) -> "TorchDistReader":
        return self

    def __exit__(self, *exc) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, info) -> int:
        if info.relative_path not in self._fds:
            self._fds[info.relative_path] = os.open(self.dir / info.relative_path, os.O_RDONLY)
        return self._fds[info.relative_path]

    def _record(self, info) -> "_FileSlice":
        return _FileSlice(self._fd(info), info.offset, info.length, self.dir / info.relative_path)

    def _load_chunk(self, info) -> torch.Tensor:
        if info.transform_descriptors:
            raise ConversionError(f"{self.dir / info.relative_path}: transformed records "
                                  f"({info.transform_descriptors}) are not supported")
        return torch.load(self._record(info), map_location="cpu", weights_only=True)

    def _raw_offset(self, info, shape: tuple[int, ...], dtype: torch.dtype) -> Optional[int]:
        """Where the chunk's bytes start in its file, if its record is one plain contiguous
        little-endian tensor of ``shape`` (torch.save stores such a tensor's bytes as they are,
        uncompressed), so they can be read straight into place; else None (read by torch.load)."""
        if info.transform_descriptors:
            return None
        fd = self._fd(info)
        try:
            with zipfile.ZipFile(self._record(info)) as zf:
                archive = zf.namelist()[0].split("/")[0]
                if zf.read(f"{archive}/byteorder") != b"little":
                    return None
                key, numel, storage_offset, size, stride = _TensorPickle(
                    io.BytesIO(zf.read(f"{archive}/data.pkl"))).load()
                entry = zf.getinfo(f"{archive}/data/{key}")
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError, pickle.UnpicklingError):
            return None
        nbytes = math.prod(shape) * dtype.itemsize
        if (storage_offset, size, stride, numel) != (0, shape, _contiguous_strides(shape), math.prod(shape)) \
                or entry.compress_type != zipfile.ZIP_STORED or entry.file_size != nbytes:
            return None
        header = os.pread(fd, 30, info.offset + entry.header_offset)  # the entry's local header
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.offset + entry.header_offset + 30 + name_len + extra_len

    def _read_chunk(self, info, chunk_shape: tuple[int, ...], src: tuple[slice, ...], dst: torch.Tensor) -> None:
        """``dst[...] = chunk[src]``: straight from the file into ``dst`` when the whole chunk is
        wanted and its record is raw; through torch.load otherwise."""
        whole = all((s.start, s.stop) == (0, n) for s, n in zip(src, chunk_shape))
        offset = self._raw_offset(info, chunk_shape, dst.dtype) if whole else None
        buffers = _row_buffers(dst) if offset is not None else None
        if buffers is None:
            dst.copy_(self._load_chunk(info)[src])
            return
        pread_exact(self._fd(info), buffers, offset, self.dir / info.relative_path)

    def read_shape(self, key: str, layer: Optional[int] = None) -> tuple[int, ...]:
        """The shape :meth:`read` returns."""
        shape = self.tensors[key][0]
        return shape if layer is None else shape[1:]

    def read(self, key: str, layer: Optional[int] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Global tensor ``key``, or its layer ``layer`` (an index into its first axis), into
        ``out`` if given (of :meth:`read_shape` and the tensor's dtype)."""
        shape, dtype = self.tensors[key]
        start, size = (0,) * len(shape), shape
        if layer is not None:
            start, size = (layer, *start[1:]), (1, *shape[1:])
        if out is None:
            out = torch.empty(size, dtype=dtype)
        elif tuple(out.shape) != self.read_shape(key, layer) or out.dtype != dtype:
            raise ValueError(f"{key}: out is {tuple(out.shape)} {out.dtype}, the read gives "
                             f"{self.read_shape(key, layer)} {dtype}")
        else:
            out = out.unsqueeze(0) if layer is not None else out
        covered = 0
        for offset, sizes, info in self._chunks[key]:
            # The overlap of the chunk [offset, offset + sizes) with the region [start, start + size).
            lo = [max(o, b) for o, b in zip(offset, start)]
            hi = [min(o + s, b + n) for o, s, b, n in zip(offset, sizes, start, size)]
            if any(h <= low for low, h in zip(lo, hi)):
                continue
            src = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, offset))
            dst = tuple(slice(low - b, h - b) for low, h, b in zip(lo, hi, start))
            self._read_chunk(info, sizes, src, out[dst])
            covered += math.prod(h - low for low, h in zip(lo, hi))
        if covered != out.numel():
            raise ConversionError(f"{self.dir}: the chunks of {key!r} cover {covered} of the {math.prod(size)} "
                                  "elements asked for (an incomplete checkpoint?)")
        return out[0] if layer is not None else out


def read_dcp_metadata(path: Path):
    """torch.distributed.checkpoint's ``.metadata``, unpickled onto plain stand-ins of its
    classes (the attributes TorchDistReader uses): importing that package costs about a second
    of a conversion's start-up. Anything the stand-ins do not know falls back to the package."""
    try:
        with open(path, "rb") as f:
            return _MetadataPickle(f).load()
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, IndexError):
        from torch.distributed.checkpoint import FileSystemReader

        return FileSystemReader(str(path.parent)).read_metadata()


class _Plain:
    """A torch.distributed.checkpoint object as plain attributes."""

    def __init__(self, *args):  # an enum member, _MEM_FORMAT_ENCODING(value)
        self.args = args

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _PlainTensorProperties(_Plain):
    def __setstate__(self, state: tuple) -> None:  # (dtype, layout, requires_grad, memory format, pin_memory)
        self.dtype = state[0]


class _PlainStorageInfo(_Plain):
    transform_descriptors = None  # left out of its pickle when None


class _PlainMetadataIndex(_Plain):
    offset = index = None  # the dataclass's defaults, which an object's pickle may leave out


_DCP_STAND_INS = {"TensorProperties": _PlainTensorProperties, "_StorageInfo": _PlainStorageInfo,
                  "MetadataIndex": _PlainMetadataIndex}


@lru_cache(maxsize=None)
def _stand_in(name: str) -> type:
    return _DCP_STAND_INS.get(name) or type(name, (_Plain,), {})


class _MetadataPickle(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("torch.distributed.checkpoint."):
            return _stand_in(name)
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):
            return torch.serialization._get_layout
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in checkpoint metadata")


class _TensorPickle(pickle.Unpickler):
    """A torch.save'd tensor's pickle read without its data: (storage key, storage numel,
    storage offset, size, stride). Anything else in it is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *_: (*storage, offset, tuple(size), tuple(stride))
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a tensor record")

    def persistent_load(self, pid):
        return pid[2], pid[4]  # ("storage", storage type, key, location, numel)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _row_buffers(dst: torch.Tensor) -> Optional[list[memoryview]]:
    """Writable buffers covering ``dst``'s bytes in C order: one if it is contiguous, else one
    per innermost row (a column block of a larger tensor); None if its rows are not contiguous."""
    if dst.dim() == 0 or dst.numel() == 0 or dst.stride(-1) != 1:
        return None
    as_bytes = dst.view(torch.uint8)
    if dst.is_contiguous():
        return [memoryview(as_bytes.numpy()).cast("B")]
    try:
        rows = as_bytes.view(-1, as_bytes.shape[-1]).numpy()  # a view, or an error (never a copy)
    except RuntimeError:
        return None
    return [memoryview(row) for row in rows]


class _FileSlice(io.RawIOBase):
    """Bytes [offset, offset + length) of an open file, as a file (torch.load reads the record
    straight into the tensor's memory). Reads at explicit offsets: safe to share the fd."""

    def __init__(self, fd: int, offset: int, length: int, path: Path):
        super().__init__()
        self._fd, self._start, self._len, self._pos, self._path = fd, offset, length, 0, path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._len}[whence]
        self._pos = min(max(base + pos, 0), self._len)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[: self._len - self._pos]
        pread_exact(self._fd, [view], self._start + self._pos, self._path)
        self._pos += len(view)
        return len(view)
