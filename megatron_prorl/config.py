"""Typed configuration: the single source of every knob, and the bottom of the package.

Each section is an OmegaConf structured dataclass. YAML files in configs/ set them and
``key=value`` overrides on the command line change them; unknown keys and wrong types are
rejected with the offending key (and file) named, and so is a value outside the set or range
its field allows (:func:`check_fields`: facts this file alone states).

This module imports nothing from the package. What needs another part's knowledge (an engine or
estimator name in a registry, a task domain, a data format, Transformer Engine being present,
the model's shape, the world size) is checked by that part (``check_config`` functions in
rollout/, algo/, data/, rewards/, models/, runtime/), composed by
:func:`megatron_prorl.train.validate.validate`, still before any rank starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and, when known, the file.
    One of :data:`megatron_prorl.errors.USER_ERRORS` (one line, exit 2)."""


@dataclass
class ModelConfig:
    # A Hugging Face directory (config.json, optional weights and tokenizer), or
    # "builtin:NAME" for a model shipped inside the package (see megatron_prorl/assets).
    hf_dir: str = "builtin:tiny"
    # Load the HF weights into the policy (False: random init from the config, for tests).
    load_weights: bool = True
    # "auto": bf16 on GPU, fp32 on CPU. Or one of fp32, bf16, fp16.
    dtype: str = "auto"
    # "auto": Transformer Engine when it imports and CUDA is present, else the local spec.
    transformer_impl: str = "auto"
    # FP8 compute (needs Transformer Engine and a GPU): null, "e4m3" or "hybrid".
    fp8: Optional[str] = None
    # TE FP8 recipe: "delayed", "tensorwise", "mxfp8" or "blockwise".
    fp8_recipe: str = "delayed"
    # Activation recomputation of whole layers to save memory at long contexts.
    recompute_activations: bool = False
    # Keep the frozen reference policy in CPU memory between uses (GPU only).
    offload_reference: bool = False
    # Log-probs and entropy computed over this many tokens at a time (recomputed in backward),
    # so the fp32 copies of the [tokens, vocab / TP] logits cover one chunk, not the whole
    # micro-batch. null: all tokens at once.
    logprob_chunk_tokens: Optional[int] = None
    init_seed: int = 1234


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # Data parallel size is derived: world_size / (TP * PP).
    sequence_parallel: bool = False
    # null: on for GPU runs, off on CPU (the distributed optimizer needs CUDA tensors).
    use_distributed_optimizer: Optional[bool] = None
    # "auto": nccl with CUDA, gloo without.
    backend: str = "auto"
    # How long a rank waits in a collective for its peers before it fails with a timeout: every
    # process group (the default one, the gloo host group, Megatron's TP/PP/DP groups). Generous,
    # because peers legitimately wait minutes: while engine ranks start their engines (a private
    # Ray instance, first kernel compiles; the others wait on the gloo group, not inside NCCL), a
    # slow checkpoint, a long generation round. NCCL's own default is 10 minutes.
    collective_timeout_minutes: int = 60
    # When `prorl train` starts the ranks itself (run directly, not under torchrun or srun): a rank
    # whose process shows no sign of life this long (its heartbeat thread is silent: stopped by
    # SIGSTOP, a frozen node, a debugger) ends the run, one line naming it; the checkpoint it
    # resumes from is left intact. Generous, as a heavily loaded node can starve a process for
    # seconds; far shorter than collective_timeout_minutes, which is what ends a run under
    # torchrun/srun (no parent of ours watches there).
    heartbeat_timeout_s: int = 600


@dataclass
class AlgoConfig:
    # Each name is looked up in megatron_prorl.algo's registries.
    advantage: str = "grpo"
    adv_eps: float = 1e-6
    scale_adv_by_std: bool = True
    policy_loss: str = "decoupled_clip"
    eps_low: float = 0.2
    eps_high: float = 0.4
    # Dual-clip, as verl's policy loss applies by default: a token with a negative advantage loses
    # at most clip_ratio_c x |A| (must be > 1; null: off).
    clip_ratio_c: Optional[float] = 3.0
    # "token-mean" (DAPO), "seq-mean-token-mean" or "seq-mean-token-sum".
    loss_agg: str = "token-mean"
    # KL to the reference policy. The paper states neither estimator nor beta: we assume
    # verl's defaults of the time (k3, 1e-3). beta 0 skips the reference forward entirely.
    kl_estimator: str = "k3"
    kl_beta: float = 1e-3
    # Clamp per-token KL estimates to [-kl_clamp, kl_clamp], whichever the estimator (null: off).
    # 10 is verl's: verl always clamps k3 to [-10, 10] and never k1 / k2; ProRL v2 clamped k2 to
    # [-10, 10]. For verl's unclamped k1 / k2 set null.
    kl_clamp: Optional[float] = 10.0
    entropy_coef: float = 0.0
    # Truncated importance sampling cap on trainer/engine probability ratios (null: off).
    tis_cap: Optional[float] = None
    # Drop groups with zero reward variance and sample more until the batch is full.
    dynamic_sampling: bool = True
    max_sampling_rounds: int = 4


@dataclass
class ResetConfig:
    # Hard-reset the reference to the current policy every N steps (0: never on schedule).
    every_n_steps: int = 0
    # Reset when the blended validation score has not improved for this many validations (0: off).
    stall_patience: int = 0
    # Reset when the mean KL to the reference exceeds this (0: off).
    kl_threshold: float = 0.0
    # Re-initialise the optimizer state at a reset (the paper does; ProRL v2 did not).
    reset_optimizer: bool = True


@dataclass
class OptimConfig:
    lr: float = 2e-6
    # "constant" or "warmup_constant" (linear warm-up over lr_warmup_steps, then constant).
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    # Abort after this many consecutive updates with a non-finite loss or gradient.
    max_consecutive_nonfinite: int = 3


@dataclass
class BatchConfig:
    # Prompts per rollout step, and prompts per optimizer update (batch / mini_batch updates).
    prompts_per_step: int = 256
    prompts_per_mini_batch: int = 64
    # Sequences per micro-batch through the pipeline schedule (when no token budget is set).
    micro_batch_size: int = 4
    # A token budget per micro-batch instead of a sequence count: sequences sorted by length and
    # bin-packed so each micro-batch holds at most this many tokens (padding included; a multiple
    # of 8, and at least every stage's max_prompt_length + max_response_length); the number of
    # micro-batches then varies per step, and the work is balanced over data-parallel ranks.
    # null: micro_batch_size sequences, padded to the batch's longest.
    max_tokens_per_micro_batch: Optional[int] = None
    # The same for the passes that only compute log-probs (old policy, reference), which keep no
    # activations for a backward and can take more. null: as max_tokens_per_micro_batch
    # (micro_batch_size sequences when that is null too).
    max_tokens_per_logprob_micro_batch: Optional[int] = None
    # Put several sequences into one row of a micro-batch, none padded, with positions restarting
    # and attention confined to each sequence (THD layout). Needs a token budget.
    pack_sequences: bool = False


@dataclass
class RolloutConfig:
    # A name in megatron_prorl.rollout.ENGINES: "transformers" (CPU, and GPU fallback) or
    # "tensorrt_llm" (GPU); or "auto": TensorRT-LLM where it can run, else transformers.
    engine: str = "transformers"
    n: int = 16
    temperature: float = 1.2
    top_p: float = 1.0
    max_prompt_length: int = 1024
    max_response_length: int = 8192
    # TensorRT-LLM weight refresh: "refit" (in place) or "rebuild" (from an exported dir).
    refresh: str = "refit"
    engine_tensor_parallel_size: int = 1
    # Put the engine to sleep (release its accelerator memory) for the update, and wake it for
    # the weight sync and the next generation (colocated GPU runs).
    sleep_during_training: bool = True
    # TensorRT-LLM: share of the GPU memory still free once the trainer's model and the engine's
    # weights are loaded that the engine's KV cache takes (KvCacheConfig.free_gpu_memory_fraction;
    # TensorRT-LLM's own default, 0.9, leaves a colocated trainer nothing). The cache is released
    # while training (sleep_during_training) but comes back at the same size on wake, so the rest
    # must hold what the trainer allocates after the engine starts: optimizer states, gradients,
    # activations. Raise it for more concurrent sequences, lower it on an out-of-memory at the
    # first update.
    kv_cache_memory_fraction: float = 0.5
    # TensorRT-LLM: a cap on the KV cache in bytes beside the fraction (KvCacheConfig.
    # max_gpu_total_bytes): with both, the smaller size wins. A byte cap does not grow with what
    # happens to be free when the engine starts (the trainer's allocator cache, another engine on
    # the GPU), so the memory left for the trainer is known in advance. null: the fraction alone.
    kv_cache_max_bytes: Optional[int] = None
    # Weight-sync bucket size in MB.
    sync_bucket_mb: int = 512
    # How shards reach the engine rank: "collective" (TP gather, PP send), "shared_memory" (CPU
    # ranks of one host write into shared buckets), "auto" (shared memory where it can, on CPU).
    sync_transport: str = "auto"
    # transformers engine: most rows (prompts x n) generated at once; null: all of them.
    engine_max_batch_size: Optional[int] = None


@dataclass
class DataSourceConfig:
    # A domain with a verifier (math, code, stem, logic, ifeval, or one registered in
    # megatron_prorl.rewards.VERIFIERS); "" takes the domain the format or generator gives.
    # For files whose rows span domains (prorl, eurus2) it keeps that domain's rows only.
    domain: str = ""
    # A local JSONL/JSON/Parquet file or a saved `datasets` directory, a hub dataset
    # "hf:NAME[?name=CONFIG&split=SPLIT]" (megatron_prorl/data/readers.py), or a generator:
    # "reasoning_gym:TASK[?config]" or "arithmetic:add" (megatron_prorl/data/generators.py).
    path: str = ""
    # Format of the file: "prorl" (our row schema) or a public format converter name
    # (megatron_prorl.data.FORMATS).
    format: str = "prorl"
    weight: float = 1.0
    # For generator sources: how many problems to generate.
    size: int = 1000
    # For a saved DatasetDict directory: which split (null: its only split); for a hub
    # dataset whose path names no split: which one (null: "train").
    split: Optional[str] = None


@dataclass
class DataConfig:
    train: list[DataSourceConfig] = field(default_factory=list)
    val: list[DataSourceConfig] = field(default_factory=list)
    # Generator sources are seeded from this, the split and their path (train != val problems).
    seed: int = 0
    # Prompts longer than rollout.max_prompt_length: "drop" the rows at load time (counted),
    # or "truncate" the start of the problem text when encoding (instruction kept).
    overlong_prompts: str = "drop"


@dataclass
class RewardsConfig:
    # Worker processes for verifiers (0: one per core).
    num_workers: int = 0
    # Wall-clock limit for one verification.
    timeout_s: float = 10.0
    # Total time limit for one code response over all its tests.
    code_timeout_s: float = 5.0
    # Refuse to execute model-written code at all (code rewards become errors).
    allow_code_execution: bool = True
    # "auto" (bubblewrap when it works, else rlimits+cgroup fallback with a warning),
    # "bwrap" (require it) or "rlimit".
    sandbox: str = "auto"
    # Per-program limits inside the sandbox: memory (address space and cgroup) and processes
    # (threads included).
    code_memory_mb: int = 1024
    code_max_processes: int = 64
    # Interpreter that runs the programs; outside /usr its installation tree is exposed read-only.
    code_python: str = "/usr/bin/python3"
    # Instruction following: all-or-nothing instead of the fraction of constraints met.
    ifeval_strict: bool = False


@dataclass
class StageConfig:
    name: str = "stage"
    steps: int = 0
    # Null fields inherit the top-level rollout/algo settings.
    max_response_length: Optional[int] = None
    n: Optional[int] = None
    temperature: Optional[float] = None
    kl_beta: Optional[float] = None
    # Domain -> weight, overriding the data.train weights.
    data_mix: dict[str, float] = field(default_factory=dict)
    reset_reference_at_start: bool = False
    # Reward penalty for responses that do not end with EOS (paper runs 4-5); 0: off.
    no_eos_penalty: float = 0.0


@dataclass
class TrainerConfig:
    stages: list[StageConfig] = field(default_factory=list)
    # Validate every N steps (0: only before the first and after the last step, when data.val is set).
    val_every: int = 0
    # pass@1 is averaged over this many samples per problem, drawn at the paper's eval settings.
    val_samples: int = 4
    val_temperature: float = 0.6
    val_top_p: float = 0.95
    # Split generation into this many chunks so reward scoring overlaps generation.
    generation_chunks: int = 2
    seed: int = 42
    output_dir: str = "runs/default"
    # `prorl train` on GPUs refuses a config whose memory plan (`prorl plan`) exceeds the GPU, naming
    # the stage, phase and shortfall; true runs it anyway (the plan is then only logged).
    ignore_memory_plan: bool = False


@dataclass
class CheckpointConfig:
    every: int = 0
    keep_last: int = 2
    # Start from this checkpoint when the output directory has none: a trainer checkpoint
    # (resumed in full) or a `prorl-convert hf-to-megatron` output (its weights, at any TP x PP).
    load: Optional[str] = None


@dataclass
class LoggingConfig:
    jsonl: bool = True
    tensorboard: bool = True
    progress: bool = True
    log_every: int = 1


@dataclass
class ProRLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reset: ResetConfig = field(default_factory=ResetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# The section types by name (``from __future__ import annotations`` leaves field types as strings).
_SECTIONS = {cls.__name__: cls for cls in (ModelConfig, ParallelConfig, AlgoConfig, ResetConfig, OptimConfig,
                                           BatchConfig, RolloutConfig, DataConfig, RewardsConfig, TrainerConfig,
                                           CheckpointConfig, LoggingConfig)}

# Keys earlier versions had, and what to do instead (a config that sets one is refused with this).
REMOVED_KEYS = {
    "rollout.seed": "it was never read: sampling seeds derive from trainer.seed; delete the key",
}


def _explain(exc: OmegaConfBaseException, where: str, cfg=None) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    if key in REMOVED_KEYS:
        return ConfigError(f"{where}: key '{key}' was removed: {REMOVED_KEYS[key]}")
    if isinstance(exc, ConfigKeyError) and key:
        return ConfigError(f"{where}: key '{key}' is not a config key{_did_you_mean(cfg, key, exc.object_type)}")
    return ConfigError(f"{where}: key '{key}': {msg}" if key else f"{where}: {msg}")


def _did_you_mean(cfg, key: str, section_type: Any = None) -> str:
    """' (did you mean `rollout.temperature`?)' for a mistyped key, or ''. The key's own
    section first (its parent in ``cfg``, or ``section_type`` for an item of a list, whose
    errors name no parent), then every key of the config."""
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if cfg is not None and parent else None
    if isinstance(node, DictConfig):
        names = [str(k) for k in node.keys()]
    elif dataclasses.is_dataclass(section_type):
        names = [f.name for f in dataclasses.fields(section_type)]
    else:
        names = []
    match = difflib.get_close_matches(last, names, n=1, cutoff=0.6)
    if match:
        return f" (did you mean `{parent}.{match[0]}`?)" if parent else f" (did you mean `{match[0]}`?)"
    # A key in the wrong section: the keys elsewhere with the nearest name.
    by_name: dict[str, list[str]] = {}
    for dotted in _dotted_keys(ProRLConfig):
        by_name.setdefault(dotted.rpartition(".")[2], []).append(dotted)
    match = difflib.get_close_matches(last, by_name, n=1, cutoff=0.8)
    return f" (did you mean {' or '.join(f'`{k}`' for k in by_name[match[0]])}?)" if match else ""


def _dotted_keys(section: type, prefix: str = "") -> list[str]:
    """Every key of a config section, nested sections spelled out (list items are not)."""
    keys = []
    for f in dataclasses.fields(section):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type in _SECTIONS):
            keys += _dotted_keys(_SECTIONS.get(f.type, f.type), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ProRLConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, type-checked at every layer, each field
    within its set or range (:func:`check_fields`). The checks that need the rest of the package
    are :func:`megatron_prorl.train.validate.validate`'s; ``load_run_config`` there does both."""
    cfg = OmegaConf.structured(ProRLConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
            if not isinstance(loaded, DictConfig):  # OmegaConf.load gives a ListConfig otherwise
                raise ConfigError(f"{path}: the top level is a list, not a mapping of sections (model:, optim:, ...)")
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as exc:
            raise _explain(exc, str(path), cfg) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a YAML text file (not UTF-8 at byte {exc.start})") from None
    return _finish(cfg, overrides)


def with_overrides(cfg: ProRLConfig, overrides: Sequence[str]) -> ProRLConfig:
    """``cfg`` with ``key=value`` overrides applied and checked as :func:`load_config` does."""
    return _finish(OmegaConf.structured(cfg), overrides)


def _finish(node: DictConfig, overrides: Sequence[str]) -> ProRLConfig:
    _apply_overrides(node, overrides)
    obj = OmegaConf.to_object(node)
    check_fields(obj)
    return obj


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Apply ``key=value`` items to ``cfg`` in place, each checked against its field."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            # update() (unlike a dotlist merge) reaches into lists: trainer.stages.0.steps=60.
            value = OmegaConf.from_dotlist([f"value{item[len(key):]}"])["value"]
            if OmegaConf.select(cfg, key) is None and not _has_key(cfg, key):
                hint = (f" was removed: {REMOVED_KEYS[key]}" if key in REMOVED_KEYS
                        else f" is not a config key{_did_you_mean(cfg, key)}")
                raise ConfigError(f"override '{item}': key '{key}'{hint}")
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as exc:
            raise _explain(exc, f"override '{item}'", cfg) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': the value is not valid YAML "
                              f"({getattr(exc, 'problem', None) or exc})") from None


_ENV_DEFAULT = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*),\s*([^}]*)\}")


def unset_env_defaults(path: str | Path) -> list[tuple[str, str, str]]:
    """(key, VARIABLE, default) for each ``${oc.env:VARIABLE,default}`` of the YAML file whose
    variable is not set, so the key took the file's default (e.g. the 1.5B config's
    ``model.hf_dir`` without PRORL_BASE_MODEL)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return []
    found = []

    def walk(node, key):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str):
            found.extend((key, var, default.strip()) for var, default in _ENV_DEFAULT.findall(node)
                         if var not in os.environ)

    walk(raw, "")
    return found


def env_hint(path: str | Path, message: str) -> str:
    """What to add to an error ``message`` about a value that came from an unset variable's
    default in the config file (the value appears in the message), or ''."""
    hints: dict[str, tuple[str, str]] = {}
    for key, var, default in unset_env_defaults(path):
        if default and default in message:
            hints.setdefault(var, (key, default))
    return "".join(f"; {var} is not set: {key} uses its default {default} from {path}; set {var}"
                   for var, (key, default) in hints.items())


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}"


def _has_key(cfg, dotted: str) -> bool:
    parent, _, last = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        return last in node
    return node is not None and last.isdigit() and int(last) < len(node)


def to_yaml(cfg: ProRLConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(repr, allowed))}")


def at_least(key: str, value, low) -> None:
    if value < low:
        raise ConfigError(f"{key}={value}: must be >= {low}")


def check_fields(cfg: ProRLConfig) -> None:
    """Each field within the set or range it allows, and the relations between fields that need
    nothing but the config."""
    m, p, a, b, r, w = cfg.model, cfg.parallel, cfg.algo, cfg.batch, cfg.rollout, cfg.rewards
    choice("model.transformer_impl", m.transformer_impl, ("auto", "local", "transformer_engine"))
    choice("model.fp8", m.fp8, (None, "e4m3", "hybrid"))
    choice("model.fp8_recipe", m.fp8_recipe, ("delayed", "tensorwise", "mxfp8", "blockwise"))
    if m.fp8 is not None and m.transformer_impl == "local":
        raise ConfigError(f"model.fp8={m.fp8!r} needs model.transformer_impl='transformer_engine' (or 'auto'): the "
                          "local layer spec has no FP8 kernels and would train without FP8")
    choice("parallel.backend", p.backend, ("auto", "nccl", "gloo"))
    choice("optim.lr_schedule", cfg.optim.lr_schedule, ("constant", "warmup_constant"))
    choice("rollout.refresh", r.refresh, ("refit", "rebuild"))
    choice("rollout.sync_transport", r.sync_transport, ("auto", "collective", "shared_memory"))
    choice("rewards.sandbox", w.sandbox, ("auto", "bwrap", "rlimit"))
    choice("data.overlong_prompts", cfg.data.overlong_prompts, ("drop", "truncate"))
    for key in ("timeout_s", "code_timeout_s", "code_memory_mb", "code_max_processes"):
        if getattr(w, key) <= 0:
            raise ConfigError(f"rewards.{key}={getattr(w, key)}: must be > 0")
    for key, value in (("parallel.tensor_model_parallel_size", p.tensor_model_parallel_size),
                       ("parallel.pipeline_model_parallel_size", p.pipeline_model_parallel_size),
                       ("batch.prompts_per_step", b.prompts_per_step),
                       ("batch.prompts_per_mini_batch", b.prompts_per_mini_batch),
                       ("batch.micro_batch_size", b.micro_batch_size),
                       ("algo.max_sampling_rounds", a.max_sampling_rounds),
                       ("rollout.engine_tensor_parallel_size", r.engine_tensor_parallel_size),
                       ("parallel.collective_timeout_minutes", p.collective_timeout_minutes),
                       ("parallel.heartbeat_timeout_s", p.heartbeat_timeout_s)):
        at_least(key, value, 1)
    for key in ("max_tokens_per_micro_batch", "max_tokens_per_logprob_micro_batch"):
        budget = getattr(b, key)
        if budget is not None and (budget < 8 or budget % 8):
            raise ConfigError(f"batch.{key}={budget}: must be a positive multiple of 8 (rows are padded to "
                              "multiples of 8 tokens), or null")
    if b.pack_sequences and b.max_tokens_per_micro_batch is None and b.max_tokens_per_logprob_micro_batch is None:
        raise ConfigError("batch.pack_sequences=true needs a token budget: set batch.max_tokens_per_micro_batch")
    if m.logprob_chunk_tokens is not None and m.logprob_chunk_tokens < 1:
        raise ConfigError(f"model.logprob_chunk_tokens={m.logprob_chunk_tokens}: must be >= 1 (or null: no chunking)")
    if b.prompts_per_step % b.prompts_per_mini_batch:
        raise ConfigError(
            f"batch.prompts_per_mini_batch={b.prompts_per_mini_batch} does not divide "
            f"batch.prompts_per_step={b.prompts_per_step}")
    if not (0 <= a.eps_low < 1 and a.eps_high >= 0):
        raise ConfigError(f"algo.eps_low={a.eps_low}, algo.eps_high={a.eps_high}: need 0 <= eps_low < 1, eps_high >= 0")
    for key, value in (("algo.kl_clamp", a.kl_clamp), ("algo.tis_cap", a.tis_cap)):
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value}: must be > 0 (or null for off)")
    if a.clip_ratio_c is not None and a.clip_ratio_c <= 1:
        raise ConfigError(f"algo.clip_ratio_c={a.clip_ratio_c}: must be > 1 (or null for off)")
    if not 0 < r.kv_cache_memory_fraction <= 1:
        raise ConfigError(f"rollout.kv_cache_memory_fraction={r.kv_cache_memory_fraction}: must be in (0, 1]")
    if r.kv_cache_max_bytes is not None and r.kv_cache_max_bytes < 1:  # TensorRT-LLM's 0 means "no cap"
        raise ConfigError(f"rollout.kv_cache_max_bytes={r.kv_cache_max_bytes}: must be a size in bytes >= 1 "
                          "(or null: no cap)")
    if r.engine_max_batch_size is not None and r.engine_max_batch_size < 1:
        raise ConfigError(f"rollout.engine_max_batch_size={r.engine_max_batch_size}: must be >= 1 (or null)")
    for split in ("train", "val"):
        for i, src in enumerate(getattr(cfg.data, split)):
            key = f"data.{split}[{i}]"
            if not src.path:
                raise ConfigError(f"{key}.path is empty")
            if src.weight < 0 or src.size < 1:
                raise ConfigError(f"{key}: need weight >= 0 and size >= 1, got weight={src.weight}, size={src.size}")
