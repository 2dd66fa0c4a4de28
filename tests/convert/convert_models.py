"""The conversion tests' four small random HF models (tests/helpers/hf_models.py), written to disk.

Every tensor is randomised (norm weights and biases too), so a mapping that misplaces any
tensor changes the logits. Four variants cover the families and options the converter handles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers.hf_models import LLAMA3, QWEN2, write_hf_dir

# 8 query heads in 4 groups: TP 1, 2 and 4 all split whole groups. A vocabulary of 300 pads to
# 384 (TP1), 512 (TP2/TP4): the last TP4 rank holds padding only.
SHAPE = dict(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, vocab_size=300,
             max_position_embeddings=256, rms_norm_eps=1e-6)

# name -> (family, tied, stored dtype, max shard size for save_pretrained or None for one file)
VARIANTS = {
    "qwen2": ("qwen2", False, torch.float32, "60KB"),
    "qwen2-tied": ("qwen2", True, torch.bfloat16, None),
    "llama": ("llama", False, torch.bfloat16, "60KB"),
    "llama-tied": ("llama", True, torch.float32, None),
}


def hf_config(family: str, tied: bool) -> dict:
    if family == "qwen2":
        return dict(QWEN2, **SHAPE, tie_word_embeddings=tied)
    # Llama-3 rope scaling with a short original context, so it changes most frequencies.
    return dict(LLAMA3, **SHAPE, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=1,
                rope_scaling=dict(LLAMA3["rope_scaling"], original_max_position_embeddings=32))


def write_variant(root: Path, name: str, seed: int = 0) -> Path:
    family, tied, dtype, shard = VARIANTS[name]
    return write_hf_dir(Path(root) / name, hf_config(family, tied), seed, every_tensor=True, dtype=dtype,
                        max_shard_size=shard)
