"""The one interface every rollout engine implements, and the registry that picks one by name.

An engine turns prompts (token ids) into sampled responses with the per-token log-probabilities
of the distribution it sampled from, takes fresh weights from the trainer as a stream of
``(hf_name, tensor)`` buckets in Hugging Face naming, and gives its accelerator memory back
while the trainer runs (``sleep``/``wake``).

Engines are looked up in :data:`ENGINES` by the name in ``rollout.engine``; each is imported
only when selected, so a CPU install never imports TensorRT-LLM.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from checkpoint_convert.buckets import Bucket
from megatron_prorl.registry import Registry

from megatron_prorl.config import ConfigError, RolloutConfig, choice
from megatron_prorl.runtime.accelerator import missing_for_tensorrt_llm

FINISH_REASONS = ("eos", "stop", "length")


# SamplingParams field -> (rule, test): the one statement of what sampling accepts.
_SAMPLING_RULES = {
    "n": ("must be >= 1", lambda v: v >= 1),
    "temperature": ("must be > 0", lambda v: v > 0),
    "top_p": ("must be in (0, 1]", lambda v: 0 < v <= 1),
    "max_new_tokens": ("must be >= 1", lambda v: v >= 1),
}


def check_sampling(**named: tuple[str, Any]) -> None:
    """Raise ValueError for the first value that breaks its rule. Each keyword is a
    SamplingParams field, given as (the name to report, e.g. a config key; the value)."""
    for field, (label, value) in named.items():
        rule, ok = _SAMPLING_RULES[field]
        if not ok(value):
            raise ValueError(f"{label}={value}: {rule}")


def check_config(r: RolloutConfig) -> None:
    """The engine is a registered one, and the sampling settings pass the sampling rules."""
    choice("rollout.engine", r.engine, engine_choices())
    try:
        check_sampling(n=("rollout.n", r.n), temperature=("rollout.temperature", r.temperature),
                       top_p=("rollout.top_p", r.top_p),
                       max_new_tokens=("rollout.max_response_length", r.max_response_length))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if resolve_engine(r.engine) == "tensorrt_llm" and r.engine_tensor_parallel_size != 1:
        raise ConfigError(f"rollout.engine_tensor_parallel_size={r.engine_tensor_parallel_size}: the TensorRT-LLM "
                          "engine runs on its trainer rank's own GPU (1); several GPUs per engine are not "
                          "supported yet")


@dataclass(frozen=True)
class SamplingParams:
    """What to sample. ``stop_token_ids`` end a response like EOS does (finish reason "stop")."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling(**{f: (f"SamplingParams.{f}", getattr(self, f)) for f in _SAMPLING_RULES})
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


@dataclass
class Sample:
    """One response. ``logprobs[i]`` is log p(token_ids[i]) under softmax(logits / T), the
    distribution sampled from (engines document what they record at top_p < 1); a terminating
    EOS/stop token is the last entry of ``token_ids`` and has its log-prob too."""

    prompt_index: int
    sample_index: int
    token_ids: list[int]
    logprobs: torch.Tensor  # float32, shape [len(token_ids)]
    finish_reason: str  # one of FINISH_REASONS

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason={self.finish_reason!r}: expected one of {FINISH_REASONS}")
        if self.logprobs.shape != (len(self.token_ids),):
            raise ValueError(
                f"prompt {self.prompt_index} sample {self.sample_index}: {len(self.token_ids)} tokens "
                f"but logprobs of shape {tuple(self.logprobs.shape)}")


@dataclass
class SyncStats:
    """What one ``update_weights`` call moved."""

    tensors: int = 0
    buckets: int = 0
    bytes: int = 0
    seconds: float = 0.0


class RolloutEngine(ABC):
    """Generation engine contract. ``generate`` returns ``len(prompt_ids) * params.n`` samples,
    grouped by prompt: prompt i's n samples are contiguous, in sample order."""

    @classmethod
    @abstractmethod
    def from_rollout_config(cls, cfg: RolloutConfig, *, hf_config: dict, hf_dir: str | None,
                            eos_token_ids: Sequence[int], pad_token_id: int | None,
                            device: str | torch.device, dtype: torch.dtype) -> RolloutEngine:
        """Build from ``rollout.*`` settings; ``hf_config`` is the model's config.json,
        ``hf_dir`` the Hugging Face directory (config, tokenizer) where one exists."""

    @abstractmethod
    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Sample]:
        ...

    @abstractmethod
    def update_weights(self, buckets: Iterable[Bucket]) -> SyncStats:
        """Load one full set of weights (HF names), streamed bucket by bucket."""

    @abstractmethod
    def sleep(self) -> None:
        """Release accelerator memory (weights may be dropped: a sync follows ``wake``)."""

    @abstractmethod
    def wake(self) -> None:
        """Restore what ``sleep`` released."""

    @abstractmethod
    def shutdown(self) -> None:
        ...


def generation_config_eos(hf_dir: str | Path | None) -> tuple[int, ...]:
    """The ``eos_token_id`` entries of ``hf_dir/generation_config.json`` (int or list; none when
    the file or the key is absent). Chat models end a turn with a token other than the
    tokenizer's EOS; TensorRT-LLM turns these into stop tokens itself."""
    if hf_dir is None or not (path := Path(hf_dir) / "generation_config.json").is_file():
        return ()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a JSON object ({err})") from None
    if eos is None:
        return ()
    ids = [eos] if isinstance(eos, int) else eos
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: eos_token_id={eos!r} is neither a token id nor a list of them")
    return tuple(ids)


def eos_token_ids(hf_dir: str | Path | None, tokenizer_eos: int | None) -> tuple[int, ...]:
    """Every id that ends a response: the tokenizer's EOS and generation_config.json's."""
    ids = tuple(dict.fromkeys(((tokenizer_eos,) if tokenizer_eos is not None else ()) + generation_config_eos(hf_dir)))
    if not ids:
        raise ValueError(f"{hf_dir}: the tokenizer has no EOS token and generation_config.json names none")
    return ids


def check_prompts(prompt_ids: Sequence[Sequence[int]]) -> None:
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")


# name -> engine class; built-ins are imported on first use (keeps GPU-only imports lazy).
ENGINES: Registry[type[RolloutEngine]] = Registry("rollout engine", {
    "transformers": "megatron_prorl.rollout.hf_engine:TransformersEngine",
    "tensorrt_llm": "megatron_prorl.rollout.trtllm:TensorRTLLMEngine",
})
register_engine = ENGINES.register
AUTO_ENGINE = "auto"


def engine_choices() -> tuple[str, ...]:
    """What an engine setting accepts: "auto" and every registered engine."""
    return (AUTO_ENGINE, *ENGINES.names())


def resolve_engine(name: str) -> str:
    """The registered engine ``name`` stands for: "auto" is TensorRT-LLM where it can run (CUDA
    and the package), else transformers; any other name is itself."""
    if name != AUTO_ENGINE:
        return name
    return "transformers" if missing_for_tensorrt_llm() else "tensorrt_llm"


def build_engine(name: str, **kwargs: Any) -> RolloutEngine:
    """Construct the engine registered as ``name`` with its own constructor arguments."""
    return ENGINES.get(name)(**kwargs)


def build_engine_from_config(cfg: RolloutConfig, **context: Any) -> RolloutEngine:
    """Construct ``cfg.engine`` ("auto" resolved) from the rollout config plus the model context
    (see :meth:`RolloutEngine.from_rollout_config`)."""
    return ENGINES.get(resolve_engine(cfg.engine)).from_rollout_config(cfg, **context)
