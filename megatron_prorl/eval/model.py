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

META_FILE = "meta.json"


class ModelNotFound(ValueError):
    pass


def find_checkpoint(path: Path) -> Path | None:
    """The checkpoint directory ``path`` names (itself, or a run's latest), or None for a HF dir."""
    from megatron_prorl.checkpoint import CheckpointManager

    if (path / "config.json").is_file():
        return None
    if (path / META_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        if (root / "latest").is_file():
            latest = CheckpointManager(root, keep_last=1).latest()
            if not (latest / META_FILE).is_file():
                raise ModelNotFound(f"--model {path}: {latest} has no {META_FILE}; not a megatron-prorl checkpoint")
            return latest
    if not path.exists():
        raise ModelNotFound(f"--model {path}: no such directory")
    raise ModelNotFound(f"--model {path}: not a Hugging Face directory (no config.json), a megatron-prorl "
                        f"checkpoint (no {META_FILE}) or a training run (no checkpoints/latest)")


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
