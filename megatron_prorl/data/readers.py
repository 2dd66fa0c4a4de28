"""Raw records from local files (JSON Lines, JSON arrays, Parquet, CSV, saved ``datasets`` dirs)
and from Hugging Face hub datasets (``hf:NAME?name=CONFIG&split=SPLIT&revision=REV``).

Parquet files are read with pyarrow (a dependency of ``datasets``), directories written by
``Dataset.save_to_disk`` with Hugging Face ``datasets`` (Arrow is their native format). Not
``datasets`` for Parquet: it rebuilds its Features from the schema metadata that ``datasets``
writes into the file, and datasets 3.x (the Docker image has 3.1.0) cannot read the metadata of
datasets >= 4 (a "List" feature type: TypeError from Features.from_dict), while the records need
no Features.

JSON files are parsed line by line with the standard library instead of Arrow's JSON reader, on
purpose: Arrow infers one schema for the whole file, so a single malformed line or a field whose
type varies between rows fails the whole file, and nested dicts with different keys are
null-filled into one struct (a code test spec would gain ``fn_name: None``; a Reasoning Gym entry
would gain every other task's metadata keys). Reading lines keeps each record exactly as written
and lets a bad line be reported and skipped alone.

CSV files (GPQA's release) are read with the standard library's ``csv`` module, a header row
naming the fields; every value stays a string.

Each record comes with its location ("line 7" for JSON Lines, "row 6" otherwise, 0-based), or
with an error message in place of the record when that line could not be parsed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Iterator, Optional, Union
from urllib.parse import parse_qsl

from megatron_prorl.errors import DataError

Record = Union[dict, str]  # a record, or the reason it could not be read

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
HUB_PREFIX = "hf:"
HUB_OPTIONS = ("name", "split", "revision")


def read_records(path: Path, split: Optional[str] = None) -> Iterator[tuple[str, Record]]:
    """Yield ``(location, record or error message)`` for every record of ``path``."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        yield from _rows(_load_saved_dataset(path, split))
    elif path.suffix == ".parquet":
        yield from _parquet_records(path)
    elif path.suffix in JSON_SUFFIXES:
        yield from _json_records(path)
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                yield f"row {i}", row
    else:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} "
                         f"(expected {', '.join(JSON_SUFFIXES)}, .parquet, .csv or a saved datasets directory)")


class HubUnreachable(DataError):
    """A hub dataset that neither the hub nor the local cache can give."""

    def __init__(self, spec: str, why: str):
        self.why = f"the Hugging Face hub cannot be reached ({why}) and the dataset is not in the local cache"
        super().__init__(f"{spec}: {self.why}")


def read_hub(spec: str, split: Optional[str] = None) -> Iterator[tuple[str, Record]]:
    """Records of the hub dataset ``spec`` (``hf:NAME[?name=CONFIG&split=SPLIT&revision=REV]``),
    through ``datasets.load_dataset``: its cache, or the hub unless HF_DATASETS_OFFLINE=1. The
    split is the spec's, else ``split``, else "train".

    Without network the hub's client retries every request for about half a minute before it
    gives up; so the hub's endpoint is tried once first (unless offline mode is set or a proxy
    stands between), and when it does not answer the dataset is read in offline mode: from the
    cache, or a :class:`HubUnreachable` at once."""
    name, _, query = spec[len(HUB_PREFIX):].partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(HUB_OPTIONS))
    if not name or unknown:
        raise DataError(f"{spec!r}: expected hf:NAME[?{'&'.join(o + '=...' for o in HUB_OPTIONS)}]"
                         + (f", got unknown option(s) {unknown}" if unknown else ""))
    import datasets

    split = options.pop("split", None) or split or "train"
    down = hub_unreachable()
    try:
        with _offline(down is not None):
            dataset = datasets.load_dataset(name, split=split, **options)
    except ConnectionError as exc:  # datasets' own, after its retries or at once in offline mode
        raise HubUnreachable(spec, down or str(exc).splitlines()[0]) from None
    yield from _rows(dataset)


def hub_unreachable(timeout: float = 5.0) -> Optional[str]:
    """Why the hub's endpoint (HF_ENDPOINT) does not answer a TCP connection, or None: it does,
    or offline mode is set (the libraries then read their cache without trying), or a proxy is
    configured (only the proxy can tell)."""
    import socket
    import urllib.parse
    import urllib.request

    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                                              for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if offline or urllib.request.getproxies():
        return None
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    return None


@contextlib.contextmanager
def _offline(offline: bool) -> Iterator[None]:
    """``datasets`` and the hub client in offline mode (cache only) within the block."""
    if not offline:
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _json_records(path: Path) -> Iterator[tuple[str, Record]]:
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("["):  # one JSON array (e.g. DeepScaleR's deepscaler.json)
            try:
                items = json.load(f)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: not valid JSON: {exc}") from None
            for i, item in enumerate(items):
                yield f"row {i}", item if isinstance(item, dict) else _not_object(item)
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {lineno}", f"invalid JSON ({exc})"
                continue
            yield f"line {lineno}", item if isinstance(item, dict) else _not_object(item)


def _parquet_records(path: Path) -> Iterator[tuple[str, Record]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield f"row {index}", record
            index += 1


def _not_object(item) -> str:
    return f"expected a JSON object, got {type(item).__name__}"


def _load_saved_dataset(path: Path, split: Optional[str]):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except FileNotFoundError:  # datasets' word for a directory without its dataset_info / dataset_dict
        contents = "empty" if not any(path.iterdir()) else "no dataset_info.json or dataset_dict.json in it"
        raise DataError(f"{path}: a directory, but not a saved datasets directory ({contents}); name a data file "
                        "or a directory written by Dataset.save_to_disk") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split is None:
        if len(loaded) != 1:
            raise DataError(f"{path}: a DatasetDict with splits {sorted(loaded)}; set the source's "
                             "'split' to choose one")
        split = next(iter(loaded))
    if split not in loaded:
        raise DataError(f"{path}: no split {split!r} (has {sorted(loaded)})")
    return loaded[split]


def _rows(dataset) -> Iterator[tuple[str, Record]]:
    index = 0
    for batch in dataset.iter(batch_size=1024):  # batched: ~10x faster than row access
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield f"row {index}", dict(zip(columns, values))
            index += 1
