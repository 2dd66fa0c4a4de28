"""Multi-stage schedules (the paper's 8k -> 16k context growth, n 16 -> 32, EOS penalty ...).

Each stage overrides a few top-level settings for a number of steps; unset fields inherit.
Pure: the trainer asks which stage a step is in and what its settings are.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_prorl.config import ConfigError, ProRLConfig
from megatron_prorl.rollout.base import check_sampling
from megatron_prorl.train.batch import check_budget


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    first_step: int  # 1-based, inclusive
    last_step: int
    n: int
    temperature: float
    max_response_length: int
    kl_beta: float
    data_mix: dict
    reset_reference_at_start: bool
    no_eos_penalty: float


def resolve_stages(cfg: ProRLConfig) -> list[Stage]:
    """The stages in order, every setting filled in (unset stage fields inherit)."""
    configured = cfg.trainer.stages
    if not configured:
        raise ConfigError("trainer.stages is empty: configure at least one stage with its steps")
    stages, first = [], 1
    for i, s in enumerate(configured):
        if s.steps < 1:
            raise ConfigError(f"trainer.stages[{i}] ({s.name!r}): steps={s.steps} must be >= 1")
        stages.append(Stage(
            index=i, name=s.name, first_step=first, last_step=first + s.steps - 1,
            n=s.n if s.n is not None else cfg.rollout.n,
            temperature=s.temperature if s.temperature is not None else cfg.rollout.temperature,
            max_response_length=s.max_response_length if s.max_response_length is not None
            else cfg.rollout.max_response_length,
            kl_beta=s.kl_beta if s.kl_beta is not None else cfg.algo.kl_beta,
            data_mix=dict(s.data_mix), reset_reference_at_start=s.reset_reference_at_start,
            no_eos_penalty=s.no_eos_penalty))
        first += s.steps
    for st in stages:
        key = f"trainer.stages[{st.index}] ({st.name!r})"
        try:
            check_sampling(n=(f"{key}: n", st.n), temperature=(f"{key}: temperature", st.temperature),
                           max_new_tokens=(f"{key}: max_response_length", st.max_response_length))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if st.n < 2:
            raise ConfigError(f"{key}: n={st.n}: GRPO needs at least 2 responses per prompt")
        check_budget(cfg.batch, cfg.rollout.max_prompt_length + st.max_response_length, key)
    return stages


def stage_of(stages: list[Stage], step: int) -> Stage:
    for st in stages:
        if st.first_step <= step <= st.last_step:
            return st
    raise ValueError(f"step {step} is outside the schedule (1..{stages[-1].last_step})")


def total_steps(stages: list[Stage]) -> int:
    return stages[-1].last_step
