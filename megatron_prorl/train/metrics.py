"""Per-step metrics: JSON lines, TensorBoard scalars and a live progress bar.

The trainer calls :meth:`MetricsLogger.log` once per training step (and once per validation)
with a flat ``{name: number}`` dict; ``prorl plot`` (:mod:`megatron_prorl.train.plot`) reads the
JSON lines back. Only rank 0 logs: other ranks build the logger with ``enabled=False`` and
every method is a no-op.

``RUN_DIR/metrics.jsonl`` holds one JSON object per line::

    {"step": 12, "kind": "train", "time": 1717171717.5, "reward/mean": 0.41, ...}
    {"step": 12, "kind": "val",   "time": ..., "val/score": 0.37, "val/pass@1/math": 0.5}
    {"step": 12, "kind": "event", "time": ..., "text": "reference reset", "category": "reset"}

``step`` counts completed optimizer steps (the first training step is 1; a baseline
validation before training is step 0). ``time`` is Unix time in seconds. Non-finite values
(NaN, +-inf) are written as ``null`` so every line is valid JSON (Python's json would write
the non-standard ``NaN``); TensorBoard still receives the NaN.

Schema of metric names (kind "train")::

    reward/mean, reward/<domain>          mean sequence reward, overall and per domain
    accuracy/<domain>                     fraction of responses judged correct
    response_length/mean                  response tokens
    response_length/max
    response_length/truncated_frac        fraction of responses cut at max length
    entropy                               mean token entropy of the policy
    kl                                    KL(policy || reference) estimate
    clip_frac_low, clip_frac_high         token fraction clipped at 1 - eps_low / 1 + eps_high
    clip_frac_dual                        token fraction capped at clip_ratio_c x |A| (dual-clip)
    ratio_mean, ratio_max                 importance ratio pi / pi_old
    dynamic_sampling/kept                 prompt groups kept / dropped (all-same reward)
    dynamic_sampling/dropped
    dynamic_sampling/rounds               generation rounds to fill the batch
    logprob_diff/mean, logprob_diff/max   |engine log-prob - trainer log-prob| per token
    grad_norm, lr
    time/generation, time/reward, time/sleep, time/reference, time/training, time/release,
    time/wake, time/sync, time/step  (s; sleep/wake: the engine releasing and restoring its memory
                                      around the update; release: the trainer's allocator cache
                                      going back to the device before the wake)
    mem/freed_gib                         GPU memory the release gave back, GiB (CUDA only; each
    mem/free_before_wake_gib              mem/* is the smallest over ranks): free before and after
    mem/free_after_wake_gib               the engine's wake (torch.cuda.mem_get_info)
    data/epochs/<source>                  passes made over each training source so far
    tokens_per_s                          generated tokens per second of step time
    sync/gb_per_s                         trainer -> engine weight transfer bandwidth

Validation records (kind "val"): ``val/score`` (blended over domains) and
``val/pass@1/<domain>``. TensorBoard tags are ``<kind>/<name>`` (``train/reward/math``);
names that already start with ``<kind>/`` are not prefixed twice (``val/score``).

Events carry a ``category``: "reset", "stage", "checkpoint", "config" (a resumed run's config
changes, each as ``{"key", "old", "new", "note"}`` under ``changes``) or "event"; when the
caller gives none it is read off the text (see :func:`event_category`). ``prorl plot`` draws
every event but checkpoints.

Resume: ``MetricsLogger(..., resume_step=k)`` with k > 0 keeps the records with ``step <= k``
(a run killed after logging step k+1 but before its checkpoint would otherwise log that step
twice) and makes TensorBoard discard its events past k. ``resume_step`` 0 or None is a fresh
run: nothing at step 0 was checkpointed, so a new log replaces any ``metrics.jsonl`` in RUN_DIR.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from checkpoint_convert.errors import is_disk_full
from megatron_prorl.config import LoggingConfig
from megatron_prorl.errors import UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
KINDS = ("train", "val")
_RESERVED = ("step", "kind", "time")
# Progress-bar postfix: (short label, metric name); a label shows once its metric is known.
_POSTFIX = (("reward", "reward/mean"), ("val", "val/score"), ("kl", "kl"),
            ("ent", "entropy"), ("s/step", "time/step"))


def event_category(text: str) -> str:
    """The category of an event given only its text ("stage 2: ...", "reference reset: ...")."""
    lowered = text.lower()
    if lowered.startswith("stage"):
        return "stage"
    if "reset" in lowered:
        return "reset"
    return "checkpoint" if lowered.startswith("checkpoint") else "event"


def _scalar(name: str, value: Any) -> float | int:
    if hasattr(value, "item"):  # 0-d torch / numpy values
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"metric {name!r}: expected a number, got {type(value).__name__} {value!r}")


def _json_safe(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _parse_lines(path: Path) -> list[dict]:
    """Records of a metrics file. A torn last line (the run was killed mid-write) is dropped;
    a malformed line elsewhere is an error naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a metrics file (not UTF-8 text at byte {exc.start})") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except ValueError as exc:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: malformed metrics record ({exc}): {line[:120]!r}") from None
        records.append(record)
    return records


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of ``RUN_DIR/metrics.jsonl`` in file order (nulls come back as None)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir} (is it a ProRL run directory?)")
    return _parse_lines(path)


def _rewrite_keeping(path: Path, max_step: int) -> None:
    """Atomically replace ``path`` by its records with ``step <= max_step``."""
    kept = [r for r in _parse_lines(path) if r["step"] <= max_step]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DiskFullError(UserError):
    """The run directory's disk filled up while logging; the message names the directory."""


class MetricsLogger:
    """Rank-0 sink for per-step metrics; see the module docstring for the format.

    Call :meth:`log` every training step: the progress bar advances every step, while
    records are written every ``cfg.log_every`` steps (and on the last step). Validation
    records and events are always written. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, run_dir: str | Path, cfg: LoggingConfig, total_steps: int, enabled: bool = True,
                 resume_step: Optional[int] = None):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_every = cfg.log_every
        self._file = self._tb = self._bar = None
        self._postfix: dict[str, float] = {}
        if not enabled:
            return
        if cfg.log_every < 1:
            raise ValueError(f"logging.log_every={cfg.log_every}: must be >= 1")
        if resume_step is not None and resume_step < 0:
            raise ValueError(f"resume_step={resume_step}: must be >= 0")
        resume_step = resume_step or None  # step 0 has no checkpoint: a fresh run
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.jsonl:
            path = self.run_dir / METRICS_FILE
            if resume_step is not None and path.exists():
                _rewrite_keeping(path, resume_step)
            self._file = open(path, "a" if resume_step is not None else "w")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # late: slow import, rank 0 only

            # purge_step makes TensorBoard drop events with step >= it from earlier files.
            purge = 0 if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge, flush_secs=10)
        if cfg.progress:
            from tqdm import tqdm

            # Not a terminal (Slurm log): one line per 30 s instead of a redraw per step.
            interval = 0.1 if sys.stderr.isatty() else 30.0
            self._bar = tqdm(total=total_steps, initial=resume_step or 0, desc="ProRL", unit="step",
                             dynamic_ncols=True, mininterval=interval, file=sys.stderr)

    def should_log(self, step: int) -> bool:
        """Whether :meth:`log` writes the train record of ``step`` (lets the trainer skip
        computing expensive metrics on the other steps)."""
        return self.enabled and (step % self.log_every == 0 or step >= self.total_steps)

    def log(self, step: int, metrics: Mapping[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        if kind not in KINDS:
            raise ValueError(f"metrics kind {kind!r}: expected one of {KINDS}")
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record header")
        values = {name: _scalar(name, v) for name, v in metrics.items()}
        self._update_bar(step, values, kind)
        if kind == "train" and not self.should_log(step):
            return
        with self._disk_errors(step):
            self._write({"step": step, "kind": kind, "time": time.time(),
                         **{k: _json_safe(v) for k, v in values.items()}})
            if self._tb is not None:
                for name, value in values.items():
                    tag = name if name.startswith(kind + "/") else f"{kind}/{name}"
                    self._tb.add_scalar(tag, value, step)

    def log_event(self, step: int, text: str, category: Optional[str] = None, extra: Optional[dict] = None) -> None:
        """A run event such as a reference reset ("reset") or a stage change ("stage");
        ``prorl plot`` draws it as a labelled vertical line coloured by category. ``extra``:
        more fields of the record (JSON values), e.g. a config change's keys."""
        if not self.enabled:
            return
        category = category or event_category(text)
        with self._disk_errors(step):
            self._write({"step": step, "kind": "event", "time": time.time(), "text": text, "category": category,
                         **(extra or {})})
            if self._tb is not None:
                self._tb.add_text(f"events/{category}", text, step)
        message = f"[step {step}] {text}"
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _disk_errors(self, step: Optional[int] = None) -> Iterator[None]:
        """A full disk while logging is one line naming the directory, not a traceback from
        the file or TensorBoard's writer thread (which re-raises its error on a later write)."""
        try:
            yield
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            what = "logging" if step is None else f"logging step {step}"
            raise DiskFullError(f"{self.run_dir}: no space left on device while {what}; "
                                "checkpoints already written are intact: free space and run the same "
                                "command to resume") from exc

    def _write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()  # a killed run keeps every line it logged

    def _update_bar(self, step: int, values: Mapping[str, float | int], kind: str) -> None:
        if self._bar is None:
            return
        for label, name in _POSTFIX:
            if name in values and math.isfinite(values[name]):
                self._postfix[label] = values[name]
        self._bar.set_postfix({k: f"{v:.3g}" for k, v in self._postfix.items()}, refresh=False)
        if kind == "train" and step > self._bar.n:
            self._bar.update(step - self._bar.n)
        else:
            self._bar.refresh()

    def close(self) -> None:
        sinks = [s for s in (self._file, self._tb, self._bar) if s is not None]
        self._file = self._tb = self._bar = None
        with self._disk_errors(), contextlib.ExitStack() as closing:  # every sink closes, whatever fails
            for sink in sinks:
                closing.callback(sink.close)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
