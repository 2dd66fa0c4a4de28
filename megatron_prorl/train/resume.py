"""What a resumed run may change: the config of this start against the checkpoint's config.yaml.

A run resumes from its newest checkpoint with whatever config it is started with. Most knobs can
change between starts (a learning rate, a clip range, the validation interval, more steps); a
few cannot, because the checkpoint's state was built on them and the resumed run would silently
be another run. :data:`RULES` is that table (first matching pattern wins):

====================================  =======  ================================================
key                                   verdict  why
====================================  =======  ================================================
model.hf_dir                          refuse   when its config.json describes another model (a
                                               moved copy of the same model is fine)
model.dtype                           refuse   weights and optimizer state were saved in it
model.load_weights, model.init_seed   allow    no effect: the weights come from the checkpoint
other model.*                         allow    compute settings (kernels, FP8, recompute, offload)
parallel.*                            allow    a new TP, PP or optimizer sharding is noted: the
                                               checkpoint is loaded into it where supported
data.seed, data.overlong_prompts      refuse   they decide the problems and the sampler's pools
data.train[i].weight                  allow    the mix from the next step
other data.train, data.val            refuse   the sampler continues its position in these
                                               sources; the validation history compares scores
                                               on these problems
trainer.seed                          refuse   every step's sampling seed and the resumed RNG
                                               states derive from it
trainer.stages                        stages that ended before the checkpoint's step are
                                      refused; the current one may change its settings (from
                                      the next step) and its steps (not to end before the step
                                      reached); later ones may change freely
checkpoint.load                       allow    ignored: the run resumes from its own checkpoint
trainer.output_dir                    -        not compared: the run resumes from it (moved or not)
everything else                       allow
====================================  =======  ================================================

Allowed changes are logged and recorded as a ``config`` event in metrics.jsonl (key, old, new,
note); refused ones stop the start with one line naming each key and why (exit 2), before any
rank starts. Keys that one of the two configs lacks (a version added or removed them) are not
compared.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf

from checkpoint_convert.checkpoint import CHECKPOINTS_DIR, LATEST, verify_checkpoint
from checkpoint_convert.errors import ConversionError
from megatron_prorl.config import ConfigError, ProRLConfig

CONFIG_FILE = "config.yaml"
STATE_FILE = "trainer_state.json"

ALLOW, REFUSE, IGNORE = "allow", "refuse", "ignore"
LAYOUT = "the checkpoint is loaded into the new layout where that is supported (the weights reshard)"
COUNT = "[#]"  # a list's length, compared like a key
FREE_FORM = (".data_mix",)  # mappings of the user's names (domain -> weight): compared whole
RULES: tuple[tuple[str, str, str], ...] = (
    ("model.hf_dir", "model", ""),  # compared by the model it names: see _model_change
    ("model.dtype", REFUSE, "the weights and optimizer state were saved in this precision"),
    ("model.load_weights", ALLOW, "no effect on resume: the weights come from the checkpoint"),
    ("model.init_seed", ALLOW, "no effect on resume: the weights come from the checkpoint"),
    ("model.*", ALLOW, ""),
    ("parallel.tensor_model_parallel_size", ALLOW, LAYOUT),
    ("parallel.pipeline_model_parallel_size", ALLOW, LAYOUT),
    ("parallel.use_distributed_optimizer", ALLOW, LAYOUT),
    ("parallel.*", ALLOW, ""),
    ("data.seed", REFUSE, "it seeds the generated problems and the sampler's order the checkpoint continues"),
    ("data.overlong_prompts", REFUSE, "it decides which rows are in the sampler's pools"),
    ("data.train[[]*[]].weight", ALLOW, "the data mix changes from the next step"),
    ("data.train*", REFUSE, "the sampler continues its position in the training sources"),
    ("data.val*", REFUSE, "the validation history (before -> after, the reset trigger's patience) compares "
                          "scores on these problems"),
    ("trainer.seed", REFUSE, "every step's sampling seed and the resumed random states derive from it"),
    ("trainer.stages*", "stages", ""),  # see _stage_change
    ("trainer.output_dir", IGNORE, ""),  # the run resumes from it: a moved run's new place
    ("checkpoint.load", ALLOW, "ignored: the run resumes from its own checkpoint"),
    ("*", ALLOW, ""),
)


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    note: str = ""  # what an allowed change does on resume
    refused: str = ""  # why it cannot change; empty: allowed

    def line(self) -> str:
        why = self.refused or self.note
        return f"{self.key} {_show(self.old)} -> {_show(self.new)}" + (f" ({why})" if why else "")

    def record(self) -> dict:
        return {"key": self.key, "old": self.old, "new": self.new, "note": self.note}


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run would resume from, as its ``latest`` pointer names it."""
    path: Path
    step: int
    config: dict  # the checkpoint's config.yaml, as written

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE


def latest_checkpoint(output_dir: str | Path) -> Optional[ResumePoint]:
    """The run's latest trainer checkpoint (its state and config checked against the manifest),
    or None when the directory has none. Cheap: the tensors are verified by the ranks."""
    pointer = Path(output_dir) / CHECKPOINTS_DIR / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        return None  # the ranks find out what is wrong and say so
    try:
        verify_checkpoint(path, only=(STATE_FILE, CONFIG_FILE))
    except ConversionError:
        return None  # damaged: the ranks fall back to an intact checkpoint, saying so
    return resume_point(path)


def resume_point(path: Path) -> ResumePoint:
    """A trainer checkpoint's step and config (an empty config where it has none)."""
    config = path / CONFIG_FILE
    return ResumePoint(path, json.loads((path / STATE_FILE).read_text())["step"],
                       (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {})


def config_changes(point: ResumePoint, cfg: ProRLConfig, hf_config: Optional[dict] = None) -> list[Change]:
    """Every key whose value differs between the checkpoint's config and ``cfg``, judged by
    :data:`RULES`; ``hf_config``: the config.json ``cfg.model.hf_dir`` names (to tell a moved
    copy of the same model from another model)."""
    old, new = _flatten(point.config), _flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
    changes = []
    for key in sorted(set(old) & set(new), key=_order):
        if old[key] == new[key]:
            continue
        verdict, why = next((v, w) for pattern, v, w in RULES if fnmatch.fnmatchcase(key, pattern))
        if verdict == IGNORE:
            continue
        if verdict == "model":
            changes.append(_model_change(key, old[key], new[key], point, hf_config))
        elif verdict == "stages":
            changes.append(_stage_change(key, old[key], new[key], point))
        elif verdict == REFUSE:
            changes.append(Change(key, old[key], new[key], refused=why))
        else:
            changes.append(Change(key, old[key], new[key], note=why))
    return changes


def check_changes(point: ResumePoint, changes: list[Change]) -> None:
    """One :class:`ConfigError` naming every refused change, if there is one."""
    refused = [c for c in changes if c.refused]
    if refused:
        raise ConfigError(f"cannot resume {point.path} (step {point.step}) with this config: "
                          + "; ".join(c.line() for c in refused)
                          + f". Undo the change (the checkpoint's config: {point.config_file}) or start a new run "
                            "in another trainer.output_dir")


def nothing_to_do(point: Optional[ResumePoint], total: int) -> Optional[str]:
    """The line to print when the run already finished every step of the schedule, with that
    checkpoint intact (all of it verified: a damaged one is left to the ranks, which fall back
    to an intact one and redo the steps after it)."""
    if point is None or point.step < total:
        return None
    try:
        verify_checkpoint(point.path)
    except ConversionError:
        return None
    return (f"nothing to do: the run finished all {total} steps ({point.path}); add steps to the last stage "
            f"(trainer.stages.{_last_stage_hint(point)}.steps=...) or a stage to continue it, or set another "
            "trainer.output_dir for a new run")


# ----------------------------------------------------------------------------- the rules

def _model_change(key, old, new, point: ResumePoint, hf_config: Optional[dict]) -> Change:
    saved = point.path / "hf" / "config.json"
    if hf_config is not None and saved.is_file():
        from checkpoint_convert.arch import hf_arch

        if hf_arch(json.loads(saved.read_text())) == hf_arch(hf_config):
            return Change(key, old, new, note="the same architecture as the checkpoint's (hf/config.json)")
    return Change(key, old, new, refused="the checkpoint's weights are another model's (its hf/config.json "
                                         "differs from this directory's)")


def _stage_change(key: str, old, new, point: ResumePoint) -> Change:
    bounds = _stage_bounds(point.config)
    if key == f"trainer.stages{COUNT}":
        return _stage_count_change(key, old, new, point, bounds)
    index, field = _stage_key(key)
    first, last = bounds[index]
    if last < point.step and index < len(bounds) - 1:
        return Change(key, old, new, refused=f"stage {index} ran steps {first}-{last}, before the checkpoint")
    if first > point.step:
        return Change(key, old, new, note="a stage not begun yet")
    if field == "steps":
        if first + int(new) - 1 < point.step:
            return Change(key, old, new, refused=f"the stage would end before step {point.step}, where the run is")
        return Change(key, old, new, note=f"stage {index} now ends at step {first + int(new) - 1}")
    if field == "reset_reference_at_start":
        return Change(key, old, new, note="no effect: the stage has begun")
    return Change(key, old, new, note=f"from step {point.step + 1}")


def _stage_count_change(key: str, old: int, new: int, point: ResumePoint, bounds) -> Change:
    if new > old:
        return Change(key, old, new, note="stages added after the last one")
    begun = [i for i, (first, _) in enumerate(bounds) if first <= point.step]
    if begun and begun[-1] >= new:
        return Change(key, old, new, refused=f"stage {begun[-1]} has begun (the run is at step {point.step})")
    return Change(key, old, new, note="stages not begun yet removed")


def _stage_bounds(config: dict) -> list[tuple[int, int]]:
    bounds, first = [], 1
    for stage in (config.get("trainer") or {}).get("stages") or []:
        bounds.append((first, first + int(stage.get("steps", 0)) - 1))
        first += int(stage.get("steps", 0))
    return bounds


def _last_stage_hint(point: ResumePoint) -> int:
    return max(0, len(_stage_bounds(point.config)) - 1)


def _stage_key(key: str) -> tuple[int, str]:
    """'trainer.stages[1].data_mix.math' -> (1, 'data_mix.math')."""
    head, _, field = key[len("trainer.stages["):].partition("].")
    return int(head), field


# ----------------------------------------------------------------------------- helpers

def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Config sections and lists of them -> {'data.train[0].path': ..., 'data.train[#]': 1}
    (a list's length under ``[#]``); other values, free-form mappings included, stay whole."""
    if isinstance(node, dict) and not prefix.endswith(FREE_FORM):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(node, list) and all(isinstance(v, dict) for v in node):
        out = {f"{prefix}{COUNT}": len(node)}
        for i, v in enumerate(node):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: node}


def _order(key: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in key.replace("[", ".").replace("]", "").split("."))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list, dict)) or value is None else str(value)
