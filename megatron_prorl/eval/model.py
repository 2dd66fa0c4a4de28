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


def find_checkpoint(path: Path) -> Path | None:
    """The checkpoint directory ``path`` names (itself, a run's latest...), or None for a HF dir."""
    from checkpoint_convert.checkpoint import resolve_checkpoint
    from checkpoint_convert.errors import ConversionError

    if (path / "config.json").is_file():
        return None
    try:
        ckpt, how = resolve_checkpoint(path)
    except ConversionError as exc:
        raise ModelNotFound(f"--model {path}: not a Hugging Face directory (no config.json), nor a checkpoint: "
                            f"{exc}") from None
    print(f"--model {path}: checkpoint {ckpt} ({how})", flush=True)
    return ckpt


@contextlib.contextmanager
def hf_model_dir(model: str, workdir: Path, progress: bool = True) -> Iterator[Path]:
    """Yield a Hugging Face directory for ``model``, converting a checkpoint into ``workdir``."""
    path = builtin.resolve(model)
    ckpt = find_checkpoint(path)
    if ckpt is None:
        yield path
        return
    from checkpoint_convert import megatron_to_hf

    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="converted-", dir=workdir) as tmp:
        if progress:
            print(f"converting {ckpt} to Hugging Face format ...", flush=True)
        megatron_to_hf(ckpt, Path(tmp) / "hf", progress=progress)
        yield Path(tmp) / "hf"
