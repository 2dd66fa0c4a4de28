"""Plans of a config: per stage, the phases' terms on the most loaded GPU, the verdict, and the
knobs that would make a stage fit (each alternative planned with the same model)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from megatron_prorl import config
from megatron_prorl.config import ConfigError, ProRLConfig
from megatron_prorl.plan.inputs import Target, shape_of, stage_inputs
from megatron_prorl.plan.memory import PHASES, GiB, Inputs, MiB, Phase, Shape, kv_bytes_per_token, worst_gpu


@dataclass
class StagePlan:
    name: str
    inputs: Inputs
    phases: dict[str, Phase]

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: self.phases[p].peak)

    @property
    def peak(self) -> int:
        return self.phases[self.peak_phase].peak

    @property
    def fits(self) -> bool:
        return self.peak <= self.inputs.gpu_bytes

    @property
    def shortfall(self) -> int:
        return self.peak - self.inputs.gpu_bytes


def plan_config(cfg: ProRLConfig, target: Target, shape: Optional[Shape] = None) -> list[StagePlan]:
    shape = shape or shape_of(cfg.model.hf_dir)
    return [StagePlan(name, inp, worst_gpu(inp)) for name, inp in stage_inputs(cfg, shape, target)]


def to_json(plans: list[StagePlan], gpu_bytes: int) -> str:
    return json.dumps({"gpu_memory_bytes": gpu_bytes, "stages": [
        {"name": p.name, "fits": p.fits, "peak_bytes": p.peak,
         "phases": {name: {"peak_bytes": ph.peak, "terms": dict(ph.terms)} for name, ph in p.phases.items()}}
        for p in plans]}, indent=1)


def table(plan: StagePlan) -> str:
    """Terms (rows) by phase (columns), the peak row: GiB, or MiB for a small plan."""
    unit, scale = ("GiB", GiB) if plan.peak >= 8 * GiB else ("MiB", MiB)
    terms: list[str] = []
    for ph in plan.phases.values():
        terms += [t for t in ph.terms if t not in terms]
    width = max(len(t) for t in terms + ["peak"]) + 2

    def row(name, values):
        return f"{name:<{width}}" + "".join(f"{(f'{v / scale:.2f}' if v else '-'):>12}" for v in values)

    head = f"{unit:<{width}}" + "".join(f"{p:>12}" for p in PHASES)
    lines = [head, "-" * len(head)]
    lines += [row(t, [plan.phases[p].terms.get(t, 0) for p in PHASES]) for t in terms]
    lines += ["-" * len(head), row("peak", [plan.phases[p].peak for p in PHASES])]
    return "\n".join(lines)


def verdict(plan: StagePlan) -> str:
    gpu = plan.inputs.gpu_bytes
    if plan.fits:
        return (f"fits: peak {plan.peak / GiB:.2f} GiB in {plan.peak_phase}, "
                f"{(gpu - plan.peak) / GiB:.2f} GiB to spare of {gpu / GiB:.2f} GiB")
    return (f"does NOT fit: {plan.peak_phase} needs {plan.peak / GiB:.2f} GiB of {gpu / GiB:.2f} GiB "
            f"({plan.shortfall / GiB:.2f} GiB short)")


def with_overrides(cfg: ProRLConfig, overrides: list[str]) -> ProRLConfig:
    """``cfg`` with ``key=value`` items applied and validated (as a run's config is)."""
    from megatron_prorl.train.validate import validate  # late: it imports torch; tables need not

    out = config.with_overrides(cfg, overrides)
    validate(out)
    return out


def alternatives(cfg: ProRLConfig, target: Target, stage: str, shape: Shape) -> list[tuple[str, StagePlan]]:
    """Single knob changes that shrink the stage's peak, each planned: recomputation, a smaller
    micro-batch, TP x 2, reference offload, a smaller KV-cache fraction (the largest that fits)."""
    m, p, b, r = cfg.model, cfg.parallel, cfg.batch, cfg.rollout
    tp = p.tensor_model_parallel_size
    candidates: list[list[str]] = []
    if not m.recompute_activations:
        candidates.append(["model.recompute_activations=true"])
    if b.micro_batch_size > 1:
        candidates.append([f"batch.micro_batch_size={max(1, b.micro_batch_size // 2)}"])
    if shape.heads % (2 * tp) == 0 and shape.kv_heads % (2 * tp) == 0 and target.gpus % (2 * tp * p.pipeline_model_parallel_size) == 0:
        candidates.append([f"parallel.tensor_model_parallel_size={2 * tp}"])
    if not m.offload_reference:
        candidates.append(["model.offload_reference=true"])
    out = []
    for overrides in candidates:
        try:
            alt = with_overrides(cfg, overrides)
            plan = next(pl for pl in plan_config(alt, target, shape) if pl.name == stage)
        except (ConfigError, ValueError):
            continue
        out.append((" ".join(overrides), plan))
    if r.engine == "tensorrt_llm":
        fraction = _largest_fitting_fraction(cfg, target, stage, shape)
        if fraction is not None and fraction < r.kv_cache_memory_fraction:
            override = f"rollout.kv_cache_memory_fraction={fraction}"
            plan = next(pl for pl in plan_config(with_overrides(cfg, [override]), target, shape) if pl.name == stage)
            out.append((override, plan))
    return out


def _largest_fitting_fraction(cfg: ProRLConfig, target: Target, stage: str, shape: Shape) -> Optional[float]:
    """The largest KV-cache fraction (in steps of 0.01) with which the stage fits, if any."""
    for hundredths in range(int(cfg.rollout.kv_cache_memory_fraction * 100), 0, -1):
        alt = with_overrides(cfg, [f"rollout.kv_cache_memory_fraction={hundredths / 100}"])
        if next(pl for pl in plan_config(alt, target, shape) if pl.name == stage).fits:
            return hundredths / 100
    return None


def render(cfg: ProRLConfig, target: Target, plans: list[StagePlan], shape: Shape, source: str) -> str:
    inp = plans[0].inputs
    lines = [f"memory plan of {source}: {target.gpus} GPUs of {target.gpu_bytes / GiB:.2f} GiB; "
             f"TP {inp.tp} x PP {inp.pp} x DP {inp.dp}, {'bf16' if inp.param_bytes == 2 else 'fp32'}, "
             f"{inp.spec} layers, engine {inp.engine}; the GPU of a replica's first rank (it holds the engine)"]
    for plan in plans:
        i = plan.inputs
        lines += ["", f"stage {plan.name}: rows of {i.seq_len} tokens ({i.prompt_len} prompt + {i.response_len} "
                      f"response), {i.rows} sequences per GPU per step, micro-batch "
                      f"{i.max_tokens_per_micro_batch or i.micro_batch_rows} "
                      f"{'tokens' if i.max_tokens_per_micro_batch else 'rows'}, recompute {'on' if i.recompute else 'off'}",
                  table(plan), verdict(plan)]
        kv = plan.phases["generation"].terms.get("kv_cache", 0)
        if kv and i.engine == "tensorrt_llm":
            per_token = kv_bytes_per_token(i.shape, i.engine_bytes, i.engine_tp)
            lines.append(f"  the engine's KV cache holds {kv // per_token:,} tokens ({per_token:,} bytes each): "
                         f"{kv // per_token // i.seq_len} rows of {i.seq_len} tokens at once")
        if not plan.fits:
            alts = alternatives(cfg, target, plan.name, shape)
            if alts:
                lines.append("  what would make it fit (each planned with the same model):")
            for override, alt in sorted(alts, key=lambda a: a[1].peak):
                lines.append(f"    {override:<44} peak {alt.peak / GiB:6.2f} GiB in {alt.peak_phase:<10} "
                             f"({(alt.peak - plan.peak) / GiB:+.2f} GiB) {'fits' if alt.fits else 'still short'}")
    return "\n".join(lines)
