"""``prorl eval``: sample every problem of every source n times, score, and record each response.

Sampling goes through the rollout engine interface and scoring through the RewardPool, both
built in :class:`Sampler` (the one place this package constructs them). Problems are processed
in fixed chunks of ``chunk_problems`` per source; chunk c of a source is generated with a seed
derived from (seed, source, c), so a chunk's responses do not depend on which other chunks ran
in the same process. ``OUT/samples.jsonl`` gets one line per response, chunk by chunk, synced
to disk as each chunk finishes (a chunk's lines are appended whole or not at all: a write that
fails part-way, as on a full disk, is cut back off); on a rerun with the same settings
(``OUT/eval_config.json``) complete chunks are kept, a chunk cut short by an interruption is
dropped and generated again, and the results are the same as those of an uninterrupted run.
Results are always recomputed from ``samples.jsonl`` (:mod:`megatron_prorl.eval.report`). An
evaluation holds ``OUT/.prorl.lock`` (:class:`~megatron_prorl.runtime.run_lock.RunLock`, as
training holds its directory): a second one into the same ``OUT`` is refused at once.

Defaults are the paper's evaluation settings (section 3.4): temperature 0.6, top_p 0.95,
16 samples per problem (pass@1 is their mean), responses up to 32k tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

# `prorl eval --help` imports this module (EvalSettings): what imports torch (the engines, the
# reward pool, the rollout and data modules below them) is imported where sampling starts.

from checkpoint_convert.errors import is_disk_full
from megatron_prorl.data.loader import derive_seed
from megatron_prorl.errors import UserError
from megatron_prorl.eval.model import check_model, hf_model_dir
from megatron_prorl.eval.sources import EvalSource, load_sources
from megatron_prorl.runtime.run_lock import RunLock

SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "eval_config.json"


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides which responses are drawn (a resumed run must match it)."""

    model: str
    data: tuple[str, ...]
    samples: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    # Prompts longer than this are cut at the start of the problem text (None: never).
    max_prompt_length: Optional[int] = None
    seed: int = 0
    # Problems drawn from each generator source (the paper: 100 per Reasoning Gym task).
    size: int = 100
    # Evaluate only the first N problems of each source (None: all).
    limit: Optional[int] = None
    chunk_problems: int = 32
    # "auto" (TensorRT-LLM where it can run, else transformers: rollout.resolve_engine) or a
    # name registered in megatron_prorl.rollout.ENGINES.
    engine: str = "auto"
    # "auto": bf16 on GPU, fp32 on CPU.
    dtype: str = "auto"
    # transformers engine: rows (problems x samples) per forward; None: a whole chunk.
    engine_max_batch_size: Optional[int] = None

    def check(self) -> None:
        from megatron_prorl.rollout.base import check_sampling, engine_choices  # late: --help stays torch-free

        check_sampling(n=("--samples", self.samples), temperature=("--temperature", self.temperature),
                       top_p=("--top-p", self.top_p), max_new_tokens=("--max-new-tokens", self.max_new_tokens))
        for name in ("size", "chunk_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)}: must be >= 1")
        for name in ("max_prompt_length", "limit", "engine_max_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')}={value}: must be >= 1")
        if self.engine not in engine_choices():
            raise ValueError(f"--engine={self.engine!r}: expected one of {', '.join(engine_choices())}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"--dtype={self.dtype!r}: expected auto, fp32, bf16 or fp16")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "data": list(self.data)}


def check_ks(ks: Sequence[int], samples: int) -> list[int]:
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"--k {','.join(map(str, ks))}: every k must be >= 1")
    if ks[-1] > samples:
        raise ValueError(f"--k {ks[-1]} > --samples {samples}: pass@k needs at least k samples per problem "
                         "(the paper drew 256 samples for pass@128)")
    return ks


def chunk_count(source: EvalSource, chunk_problems: int) -> int:
    return -(-len(source.rows) // chunk_problems)


def _settings_file(out: Path, settings: EvalSettings) -> None:
    """Write the settings, or check that a previous run in ``out`` used the same ones."""
    path = out / CONFIG_FILE
    mine = settings.to_json()
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); remove it or use another --out") from None
        changed = [f"{k}: {theirs.get(k)!r} -> {v!r}" for k, v in mine.items() if theirs.get(k) != v]
        if changed:
            raise ValueError(f"{out} holds an evaluation with other settings ({'; '.join(changed)}); "
                             "use another --out to start a new one")
        return
    if (out / SAMPLES_FILE).exists():
        raise ValueError(f"{out / SAMPLES_FILE} exists without {CONFIG_FILE}: use another --out")
    path.write_text(json.dumps(mine, indent=1) + "\n")


def _lines(path: Path) -> Iterator[tuple[int, str, dict]]:
    """(byte offset after the line, line, record) of a samples.jsonl, streamed; a cut-off last
    line (an interrupted write) ends the file."""
    if not path.is_file():
        return
    end = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            end += len(raw)
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                yield end, line, json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):  # the last line, cut short
                    return
                raise ValueError(f"{path}: line {number} is not valid JSON ({exc})") from None


def read_samples(path: str | Path, text: bool = False) -> list[dict]:
    """The records of a samples.jsonl, without the response texts unless ``text``."""
    return [r if text else {k: v for k, v in r.items() if k != "response"} for _, _, r in _lines(Path(path))]


def _complete_chunks(path: Path, sources: Sequence[EvalSource], settings: EvalSettings) -> list[dict]:
    """Keep the records of complete chunks, removing the rest from ``path``; return them
    without their texts.

    An interruption leaves its chunk last, so what goes is usually the end of the file: it is
    cut off in place, which needs no free space (a full disk is a common cause). Anything else
    is rewritten without the incomplete chunks."""
    expected = {}
    for src in sources:
        for c in range(chunk_count(src, settings.chunk_problems)):
            rows = src.rows[c * settings.chunk_problems:(c + 1) * settings.chunk_problems]
            expected[src.label, c] = len(rows) * settings.samples
    lines = [(end, (r["source"], r["chunk"])) for end, _, r in _lines(path)]
    counts = Counter(key for _, key in lines)
    done = {key for key, n in counts.items() if expected.get(key) == n}
    kept = [key in done for _, key in lines]
    whole = sum(kept)
    if all(kept[:whole]):  # the complete chunks come first: cut the rest off
        end = lines[whole - 1][0] if whole else 0
        if end < (path.stat().st_size if path.is_file() else 0):
            os.truncate(path, end)
        if end and _last_byte(path) != b"\n":  # the last line whole, its newline lost
            with path.open("ab") as f:
                f.write(b"\n")
    else:
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(line.rstrip("\n") + "\n" for _, line, r in _lines(path) if (r["source"], r["chunk"]) in done)
        os.replace(tmp, path)
    return read_samples(path)


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _append_whole(fd: int, data: bytes) -> None:
    """Append ``data`` (whole lines) to the file open at ``fd``, or nothing: a write that fails
    part-way (a full disk, an interrupt) is cut back off, so the file never ends inside a line."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.ftruncate(fd, start)
        raise


@contextlib.contextmanager
def _disk_full_is_one_line(out: Path) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise UserError(f"{out}: no space left on device; {SAMPLES_FILE} keeps every chunk finished before: free "
                        "space and rerun the same command to resume") from None


class Sampler:
    """The rollout engine, tokenizer and reward pool of one evaluation (a context manager)."""

    def __init__(self, hf_dir: Path, settings: EvalSettings, domains: Sequence[str],
                 reward_workers: Optional[int] = None):
        from transformers import AutoTokenizer

        from checkpoint_convert.arch import read_hf_config
        from megatron_prorl.runtime import device
        from megatron_prorl.config import ModelConfig, RewardsConfig, RolloutConfig
        from megatron_prorl.models.builder import resolve_dtype
        from megatron_prorl.rewards import RewardPool
        from megatron_prorl.rollout import build_engine_from_config
        from megatron_prorl.rollout.base import eos_token_ids

        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        hf_config = read_hf_config(hf_dir)
        pad = self.tokenizer.pad_token_id
        self.engine = build_engine_from_config(
            RolloutConfig(engine=settings.engine, engine_max_batch_size=settings.engine_max_batch_size),
            hf_config=hf_config, hf_dir=str(hf_dir), eos_token_ids=eos_token_ids(hf_dir, self.tokenizer.eos_token_id),
            pad_token_id=pad if pad is not None else 0, device=device.current(),
            dtype=resolve_dtype(ModelConfig(dtype=settings.dtype)))
        try:
            # The engine contract: weights arrive through update_weights (an engine that also
            # read hf_dir itself gets the same values again).
            self.engine.update_weights(hf_weight_buckets(hf_dir, hf_config))
            self.pool = RewardPool(RewardsConfig(num_workers=reward_workers or 0), preload=tuple(domains))
        except BaseException:
            self.engine.shutdown()
            raise

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.close()
        self.engine.shutdown()

    def sample(self, source: EvalSource, chunk: int, seed: int) -> list[dict]:
        """The scored responses of one chunk of ``source``, as samples.jsonl records."""
        from megatron_prorl.data import encode_prompt
        from megatron_prorl.rollout import SamplingParams
        from megatron_prorl.rollout.generate import generate_groups, response_texts

        s = self.settings
        first = chunk * s.chunk_problems
        rows = source.rows[first:first + s.chunk_problems]
        prompt_ids = [encode_prompt(self.tokenizer, r, s.max_prompt_length)[0] for r in rows]
        params = SamplingParams(n=s.samples, temperature=s.temperature, top_p=s.top_p,
                                max_new_tokens=s.max_new_tokens, seed=seed)
        groups, _ = generate_groups(self.engine, self.pool, self.tokenizer, rows, prompt_ids, params)
        records = []
        for j, group in enumerate(groups):
            texts = response_texts(self.tokenizer, group.samples)
            for sample, result, text in zip(group.samples, group.results, texts):
                answer = result.details.get("answer")
                records.append({
                    "source": source.label, "chunk": chunk, "problem": first + j, "problem_id": group.row.id,
                    "domain": group.domain, "sample": sample.sample_index, "score": result.reward,
                    "reason": result.reason, "answer": answer if isinstance(answer, str) else None,
                    "finish_reason": sample.finish_reason, "length": len(sample.token_ids), "response": text,
                })
        return records


def hf_weight_buckets(hf_dir: Path, hf_config: dict, bucket_bytes: int = 512 << 20):
    """The weights of a HF directory as weight-sync buckets, read one bucket at a time."""
    from checkpoint_convert import HFWeights
    from checkpoint_convert.arch import hf_arch
    from checkpoint_convert.buckets import plan_buckets
    from checkpoint_convert.mapping import is_ignored_hf_name

    arch = hf_arch(hf_config, source=str(Path(hf_dir) / "config.json"))
    with HFWeights(hf_dir) as weights:
        names = [n for n in weights.tensors if not is_ignored_hf_name(n, arch)]
        for group in plan_buckets([(n, weights.tensors[n].nbytes) for n in names], bucket_bytes):
            yield [(n, weights.read(n)) for n in group]


def evaluate(settings: EvalSettings, out_dir: str | Path, *, reward_workers: Optional[int] = None,
             progress: bool = True) -> list[dict]:
    """Run (or resume) an evaluation into ``out_dir``; return every samples.jsonl record (without
    the response texts, which can be large)."""
    settings.check()
    check_model(settings.model)  # a bad --model fails before anything is written or built
    sources = load_sources(settings.data, settings.size, settings.seed, settings.limit)
    out = Path(out_dir)
    # The lock as training's on its directory: a second evaluation into out is refused at once.
    with _disk_full_is_one_line(out), RunLock(out, "--out"):
        _settings_file(out, settings)
        return _sample_missing(settings, sources, out, reward_workers, progress)


def _sample_missing(settings: EvalSettings, sources: Sequence[EvalSource], out: Path,
                    reward_workers: Optional[int], progress: bool) -> list[dict]:
    """Sample the chunks ``out`` lacks; every record, as :func:`evaluate`."""
    from tqdm import tqdm

    path = out / SAMPLES_FILE
    records = _complete_chunks(path, sources, settings)
    done = {(r["source"], r["chunk"]) for r in records}
    todo = [(src, c) for src in sources for c in range(chunk_count(src, settings.chunk_problems))
            if (src.label, c) not in done]
    if not todo:
        return records
    total = sum(len(s.rows) for s in sources)
    remaining = sum(len(src.rows[c * settings.chunk_problems:(c + 1) * settings.chunk_problems]) for src, c in todo)
    domains = sorted({r.domain for src, _ in todo for r in src.rows})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with hf_model_dir(settings.model, out, progress) as hf_dir, \
                Sampler(hf_dir, settings, domains, reward_workers) as sampler, \
                tqdm(total=total, initial=total - remaining, unit="problem", desc="eval", disable=not progress) as bar:
            for src, c in todo:
                bar.set_postfix_str(src.label)
                new = sampler.sample(src, c, derive_seed(settings.seed, f"eval/chunk{c}", src.label))
                _append_whole(fd, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new).encode())
                records += [{k: v for k, v in r.items() if k != "response"} for r in new]
                bar.update(len(new) // settings.samples)
    finally:
        os.close(fd)
    return records
