"""What ``--model`` names, as a Hugging Face directory the rollout engines can load.

Accepted: a Hugging Face directory (``config.json``, safetensors weights, tokenizer) or
``builtin:NAME``; a megatron-prorl checkpoint (``meta.json`` + ``model/``: a trainer checkpoint
``RUN/checkpoints/step_XXXXXXXX`` or a ``prorl-convert hf-to-megatron`` output); a training run
directory (``RUN``, its ``checkpoints/latest``) or its ``checkpoints`` directory. Checkpoints are
converted on the fly with ``checkpoint_convert.megatron_to_hf`` into a temporary directory that
is removed afterwards.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from megatron_prorl import builtin

# checkpoint_convert's checkpoint modules import torch: imported when a checkpoint is named, so that
# `prorl eval --help` (which imports this module) stays fast.

class ModelNotFound(ValueError):
    pass


def find_checkpoint(path: Path) -> tuple[Path, str] | None:
    """The checkpoint directory ``path`` names (itself, a run's latest...) and how it was
    found, or None for a HF dir."""
    from checkpoint_convert.checkpoint import resolve_checkpoint
    from checkpoint_convert.errors import ConversionError

    if (path / "config.json").is_file():
        return None
    try:
        return resolve_checkpoint(path)
    except ConversionError as exc:
        raise ModelNotFound(f"--model {path}: not a Hugging Face directory (no config.json), nor a checkpoint: "
                            f"{exc}") from None


def tokenizer_dir(model: str) -> Path:
    """Where ``--model``'s tokenizer and chat template are: the HF directory, or the
    checkpoint's copy of its model's (``hf/``)."""
    path = builtin.resolve(model)
    found = find_checkpoint(path)
    return path if found is None else found[0] / "hf"


def check_model(model: str) -> None:
    """Refuse a model directory training would refuse, before anything is built: its config.json
    (a checkpoint's hf/config.json) read by checkpoint_convert.arch as ``prorl train`` and
    ``prorl-convert`` read it (transformers would fill an incomplete one with defaults)."""
    from checkpoint_convert.arch import load_arch
    from checkpoint_convert.checkpoint import checkpoint_arch

    path = builtin.resolve(model)
    found = find_checkpoint(path)
    load_arch(path) if found is None else checkpoint_arch(found[0])


@contextlib.contextmanager
def hf_model_dir(model: str, workdir: Path, progress: bool = True) -> Iterator[Path]:
    """Yield a Hugging Face directory for ``model``, converting a checkpoint into ``workdir``."""
    path = builtin.resolve(model)
    found = find_checkpoint(path)
    if found is None:
        yield path
        return
    from checkpoint_convert import megatron_to_hf
    from megatron_prorl.data.model_card import write_model_card

    ckpt, how = found
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="converted-", dir=workdir) as tmp:
        print(f"--model {path}: checkpoint {ckpt} ({how}), converting it to Hugging Face format ...", flush=True)
        megatron_to_hf(ckpt, Path(tmp) / "hf", progress=progress)
        write_model_card(Path(tmp) / "hf", ckpt)  # as every exported directory has it
        yield Path(tmp) / "hf"
