"""Check a conversion end to end: the Megatron model and transformers' model on the same tokens.

The Megatron model runs in this process at TP1 x PP1, loaded through dist_checkpointing, which
reshards the checkpoint from whatever TP x PP wrote it; both models compute in fp32.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from checkpoint_convert.arch import load_arch
from checkpoint_convert.checkpoint import (HF_DIR, META_FILE, MODEL_DIR, checkpoint_arch, load_model_checkpoint,
                                           resolve_checkpoint, verify_checkpoint)
from checkpoint_convert.errors import ConversionError
from megatron_prorl.config import ModelConfig, ParallelConfig
from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
from megatron_prorl.models.builder import build_gpt_model


@torch.no_grad()
def megatron_logits(model, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits [b, s, vocab] of a TP1 x PP1 GPTModel (padded vocabulary columns dropped)."""
    b, s = tokens.shape
    positions = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    return model(tokens, positions, None)[..., :vocab_size]


@torch.no_grad()
def max_logit_diff(hf_dir: os.PathLike, ckpt_dir: os.PathLike, seq_len: int = 32, batch: int = 2,
                   seed: int = 0) -> float:
    """Max |logit difference| between the HF model in ``hf_dir`` and the checkpoint in ``ckpt_dir``."""
    from transformers import AutoModelForCausalLM

    src = Path(hf_dir)
    ckpt_dir, _ = resolve_checkpoint(ckpt_dir)
    verify_checkpoint(ckpt_dir, only=(MODEL_DIR, HF_DIR, META_FILE))
    arch = checkpoint_arch(ckpt_dir)
    theirs_arch = load_arch(src)
    if replace(theirs_arch, torch_dtype=arch.torch_dtype) != arch:
        raise ConversionError(f"{src}/config.json and {Path(ckpt_dir)}/hf/config.json describe different models")
    tokens = torch.randint(arch.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    init_distributed(ParallelConfig())
    try:
        model = build_gpt_model(arch, ModelConfig(dtype="fp32", transformer_impl="local"), ParallelConfig(),
                                max_sequence_length=seq_len)
        load_model_checkpoint(model, ckpt_dir)
        model.eval()
        device = next(model.parameters()).device
        ours = megatron_logits(model, tokens.to(device), arch.vocab_size).float().cpu()
        del model
    finally:
        shutdown_distributed()
    hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    theirs = hf(tokens).logits.float()
    return (ours - theirs).abs().max().item()
