"""The prompt format and model card an exported model carries.

A policy trained here saw every problem as one user turn, the problem then its domain's
instruction on its own line (:mod:`megatron_prorl.data.prompts`), through the tokenizer's chat
template with the generation prompt; its answers are read where that instruction asks for them
(``\\boxed{}`` for math). Prompted with the chat template alone it answers worse, so every model
directory ``prorl-convert megatron-to-hf`` (and ``prorl eval``'s on-the-fly conversion) writes
holds:

- ``prorl_prompt.json``: the format, machine-readable: the user-turn template and each domain's
  instruction, the chat template's source, how to tokenize, and a rendered example per domain;
- ``README.md``: a model card with the hub's metadata header (base model, tags, datasets,
  pipeline tag, licence where the base model's card states one), the training recipe and
  config summary (from the checkpoint's config.yaml, for a training checkpoint), the data, the
  prompt per domain with an example, and the run's validation figures at the checkpoint (from
  its trainer_state.json: the same figures as metrics.jsonl's validation records up to that
  step). ``python -m checkpoint_convert`` alone, which knows nothing of prompts, writes neither.

With transformers and the exported directory only::

    fmt = json.load(open(f"{model_dir}/prorl_prompt.json"))
    turn = fmt["user_turn"].format(problem=problem, instruction=fmt["domains"]["math"]["instruction"])
    text = tokenizer.apply_chat_template([{"role": "user", "content": turn}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from megatron_prorl import domains
from megatron_prorl.data import generators
from megatron_prorl.data.formats import FORMATS
from megatron_prorl.data.prompts import USER_TURN, USER_TURN_WITHOUT_INSTRUCTION, render_user_turn, user_turn

PROMPT_FILE = "prorl_prompt.json"
CARD_FILE = "README.md"
FORMAT_VERSION = 1
TAGS = ["megatron-prorl", "prorl", "grpo", "reinforcement-learning", "reasoning"]
# The knobs of the recipe a card lists, in this order (present ones; the rest is in config.yaml).
RECIPE_KEYS = (
    "algo.advantage", "algo.policy_loss", "algo.eps_low", "algo.eps_high", "algo.clip_ratio_c", "algo.loss_agg",
    "algo.kl_estimator", "algo.kl_beta", "algo.kl_clamp", "algo.entropy_coef", "algo.tis_cap",
    "algo.dynamic_sampling", "reset.every_n_steps", "reset.stall_patience", "reset.kl_threshold",
    "reset.reset_optimizer", "optim.lr", "optim.lr_schedule", "optim.weight_decay", "optim.clip_grad",
    "batch.prompts_per_step", "batch.prompts_per_mini_batch", "rollout.n", "rollout.temperature", "rollout.top_p",
    "rollout.max_prompt_length", "rollout.max_response_length", "model.dtype",
    "parallel.tensor_model_parallel_size", "parallel.pipeline_model_parallel_size", "trainer.seed")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------- the format

def prompt_format(tokenizer, domain_names: Sequence[str]) -> dict:
    """The prompt format of ``domain_names`` with ``tokenizer``'s chat template (the record
    written as prorl_prompt.json); without a tokenizer or chat template (a directory that has
    none cannot be trained here either) the examples are not rendered."""
    template = getattr(tokenizer, "chat_template", None)
    per_domain = {}
    for name in domains.in_report_order(domain_names):
        record = domains.get(name)
        entry: dict[str, Any] = {"instruction": record.instruction,
                                 "user_turn": USER_TURN if record.instruction else USER_TURN_WITHOUT_INSTRUCTION}
        if record.example:
            turn = user_turn(record.example, name)
            entry["example"] = {"problem": record.example, "user_turn": turn,
                                "prompt": render_user_turn(tokenizer, turn) if template else None}
        per_domain[name] = entry
    return {
        "format_version": FORMAT_VERSION,
        "user_turn": USER_TURN,
        "user_turn_without_instruction": USER_TURN_WITHOUT_INSTRUCTION,
        "messages": [{"role": "user", "content": "<user_turn>"}],
        "add_generation_prompt": True,
        "add_special_tokens": False,
        "chat_template": template,
        "how": ("user_turn.format(problem=PROBLEM, instruction=domains[DOMAIN].instruction) is the content of one "
                "user message (user_turn_without_instruction where the domain has none); render it with the "
                "tokenizer's chat template (the chat_template here) and add_generation_prompt=True; tokenize the "
                "text with add_special_tokens=False (the template holds the special tokens it needs)"),
        "domains": per_domain,
    }


def write_prompt_format(model_dir: Path, domain_names: Sequence[str], tokenizer=None) -> dict:
    """``model_dir/prorl_prompt.json`` (the tokenizer: ``model_dir``'s unless given)."""
    tokenizer = tokenizer or _tokenizer(model_dir)
    fmt = prompt_format(tokenizer, domain_names)
    (Path(model_dir) / PROMPT_FILE).write_text(json.dumps(fmt, indent=1, ensure_ascii=False) + "\n")
    return fmt


# ----------------------------------------------------------------------------- the card

def write_model_card(model_dir: str | Path, ckpt: Optional[Path] = None) -> Path:
    """``prorl_prompt.json`` and ``README.md`` in the exported ``model_dir``; ``ckpt``: the
    checkpoint it was converted from (a training checkpoint adds the recipe, the data and the
    validation figures)."""
    model_dir = Path(model_dir)
    run = _TrainingRun.read(ckpt) if ckpt is not None else None
    names = run.domains() if run is not None else list(domains.names())
    fmt = write_prompt_format(model_dir, names)
    path = model_dir / CARD_FILE
    path.write_text(_card(model_dir, fmt, run))
    return path


class _TrainingRun:
    """What a trainer checkpoint records of its run: config.yaml and trainer_state.json."""

    def __init__(self, ckpt: Path, config: dict, state: dict):
        self.ckpt, self.config, self.state = ckpt, config, state

    @classmethod
    def read(cls, ckpt: Path) -> Optional["_TrainingRun"]:
        config, state = Path(ckpt) / "config.yaml", Path(ckpt) / "trainer_state.json"
        if not (config.is_file() and state.is_file()):
            return None  # a converted model (prorl-convert hf-to-megatron), not a training run
        return cls(Path(ckpt), yaml.safe_load(config.read_text()) or {}, json.loads(state.read_text()) or {})

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def sources(self) -> list[tuple[str, dict]]:
        return [(split, src) for split in ("train", "val") for src in self.get(f"data.{split}", []) or []]

    def domains(self) -> list[str]:
        """The domains its data holds (every registered one where a file's rows could be any)."""
        found = set()
        for _, src in self.sources():
            path, fmt = str(src.get("path", "")), src.get("format", "prorl")
            domain = src.get("domain") or (generators.domain_of(path) if generators.is_generator(path) else None)
            if not domain and fmt in FORMATS:
                domain = FORMATS.get(fmt).domain
            if not domain:
                return list(domains.names())
            found.add(domain)
        return [d for d in found if d in domains.DOMAINS] or list(domains.names())

    def hub_datasets(self) -> list[str]:
        """Hub dataset ids behind the data: ``hf:`` sources, and files ``prorl data prepare`` made
        from one (its prepared.json beside them says which)."""
        found = []
        for _, src in self.sources():
            spec = str(src.get("path", ""))
            if not spec.startswith("hf:"):
                manifest = Path(spec).parent / "prepared.json"
                try:
                    spec = json.loads(manifest.read_text())[Path(spec).name]["inputs"]["source"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
            name = str(spec)[len("hf:"):].partition("?")[0] if str(spec).startswith("hf:") else ""
            if _HUB_ID.match(name) and name not in found:
                found.append(name)
        return found


def _card(model_dir: Path, fmt: dict, run: Optional[_TrainingRun]) -> str:
    base = run.get("model.hf_dir") if run is not None else None
    header: dict[str, Any] = {}
    base_id = _base_model_id(base, model_dir)
    if base_id:
        header["base_model"] = base_id
    header.update(library_name="transformers", pipeline_tag="text-generation", tags=TAGS)
    if run is not None and run.hub_datasets():
        header["datasets"] = run.hub_datasets()
    license_ = _base_license(base)
    if license_:
        header["license"] = license_
    parts = ["---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n", f"# {model_dir.name}\n"]
    if run is not None:
        parts += _training_sections(run, base, base_id)
    else:
        parts.append("Converted from a Megatron checkpoint by `prorl-convert megatron-to-hf` (megatron-prorl). "
                     "The checkpoint records no training run, so this card gives the prompt format megatron-prorl "
                     "trains and evaluates with.\n")
    parts.append(_prompt_section(fmt))
    return "\n".join(parts)


def _training_sections(run: _TrainingRun, base: Optional[str], base_id: Optional[str]) -> list[str]:
    step = run.state.get("step")
    stages = run.get("trainer.stages", []) or []
    total = sum(int(s.get("steps", 0)) for s in stages)
    resets = [r.get("step") for r in (run.state.get("actor") or {}).get("resets", [])]
    lines = [f"Trained with ProRL (prolonged reinforcement learning with verifiable rewards, arXiv 2505.24864) "
             f"in megatron-prorl from {f'`{base_id}`' if base_id else f'`{base}`'}: step {step} of {total}"
             + (f", reference resets at steps {', '.join(map(str, resets))}" if resets else "") + f" "
             f"(checkpoint `{run.ckpt.name}`; its full config is `config.yaml` there).\n"]
    lines.append("## Training recipe\n\n| setting | value |\n|---|---|")
    lines += [f"| `{key}` | {_value(run.get(key))} |" for key in RECIPE_KEYS if run.get(key, _MISSING) is not _MISSING]
    if stages:
        lines.append("\n| stage | steps | settings |\n|---|---|---|")
        for s in stages:
            settings = ", ".join(f"{k}={_value(v)}" for k, v in s.items()
                                 if k not in ("name", "steps") and v not in (None, {}, False, 0, 0.0))
            lines.append(f"| {s.get('name')} | {s.get('steps')} | {settings or '-'} |")
    lines.append("\n## Data\n\n| split | source | domain | weight |\n|---|---|---|---|")
    for split, src in run.sources():
        lines.append(f"| {split} | `{src.get('path')}` | {src.get('domain') or '(from the source)'} | "
                     f"{_value(src.get('weight', 1.0)) if split == 'train' else '-'} |")
    history = run.state.get("validation_history") or []
    if history:
        lines.append(f"\n## Evaluation\n\nValidation during training (pass@1 over "
                     f"{run.get('trainer.val_samples')} samples at temperature {run.get('trainer.val_temperature')}, "
                     f"top_p {run.get('trainer.val_top_p')}; the data.val sets above):\n")
        first, last = history[0], history[-1]
        keys = sorted(k for k in last if k.startswith("val/"))
        shown = [first, last] if first is not last else [last]
        lines.append("| metric | " + " | ".join(f"step {h['step']}" for h in shown) + " |")
        lines.append("|---|" + "---|" * len(shown))
        lines += [f"| {k} | " + " | ".join(_value(h.get(k)) for h in shown) + " |" for k in keys]
    return ["\n".join(lines) + "\n"]


def _prompt_section(fmt: dict) -> str:
    lines = ["## Prompt format\n",
             "Prompt the model as it was trained, or it answers worse: one user message holding the problem and, "
             "on its own line after it, the instruction of the problem's domain; rendered with this directory's "
             "chat template and the generation prompt; tokenized without adding special tokens. "
             "`prorl_prompt.json` holds the same, machine-readable.\n",
             "| domain | instruction after the problem |\n|---|---|"]
    lines += [f"| {name} | {entry['instruction'] or '(none: the problem states its constraints)'} |"
              for name, entry in fmt["domains"].items()]
    lines.append("\nIn Python, with transformers:\n\n```python\nimport json\n"
                 "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 "model_dir = \"PATH/TO/THIS/DIRECTORY\"\n"
                 "tokenizer = AutoTokenizer.from_pretrained(model_dir)\n"
                 "model = AutoModelForCausalLM.from_pretrained(model_dir)\n"
                 "fmt = json.load(open(f\"{model_dir}/prorl_prompt.json\"))\n"
                 "domain, problem = \"math\", \"What is 63+32?\"\n"
                 "turn = fmt[\"user_turn\"].format(problem=problem, instruction=fmt[\"domains\"][domain][\"instruction\"])\n"
                 "text = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": turn}], tokenize=False,\n"
                 "                                     add_generation_prompt=True)\n"
                 "ids = tokenizer(text, add_special_tokens=False, return_tensors=\"pt\").input_ids\n"
                 "out = model.generate(ids, max_new_tokens=512)\n"
                 "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))\n```\n")
    if not fmt["chat_template"]:
        lines.append("This directory's tokenizer has no chat template: give it one before prompting the model as "
                     "above (training rendered every prompt through one).\n")
    for name, entry in fmt["domains"].items():
        if entry.get("example", {}).get("prompt"):
            lines.append(f"Example ({name}), the whole prompt text the model continues from:\n\n```text\n"
                         f"{entry['example']['prompt']}\n```\n")
    return "\n".join(lines)


_MISSING = object()


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)


def _base_model_id(base: Optional[str], model_dir: Path) -> Optional[str]:
    """The hub id of the base model, where it can be told: a hub cache path
    (``models--ORG--NAME``), or ``_name_or_path`` in the config.json naming one."""
    if base:
        cached = re.search(r"models--([^/]+?)--([^/]+)", base)
        if cached:
            return f"{cached.group(1)}/{cached.group(2)}"
    try:
        named = json.loads((model_dir / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        return None
    return named if isinstance(named, str) and _HUB_ID.match(named) and not Path(named).exists() else None


def _base_license(base: Optional[str]) -> Optional[str]:
    """The licence the base model's own card states in its header, when that card is here."""
    if not base:
        return None
    try:
        text = (Path(base) / CARD_FILE).read_text()
        header = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, ValueError, IndexError, yaml.YAMLError):
        return None
    value = header.get("license") if isinstance(header, dict) else None
    return str(value) if value else None


def _tokenizer(model_dir: Path):
    """The directory's tokenizer, or None where it has none that loads."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError):
        return None
