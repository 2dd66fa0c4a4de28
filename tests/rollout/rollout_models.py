"""Small real Qwen2 models (transformers, built from tests/helpers/hf_models.py's config) for the
rollout tests."""

from __future__ import annotations

import torch
from transformers import Qwen2Config

from checkpoint_convert.buckets import plan_buckets
from helpers.hf_models import QWEN2, random_model


def qwen2_config(tie: bool = True, **overrides) -> dict:
    """The tiny Qwen2 (hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 100) as a full
    config.json dict, with a wide init so that next-token distributions are peaked and depend
    on the context (a near-uniform model would hide position or masking errors in the log-probs)."""
    return Qwen2Config(**dict(QWEN2, tie_word_embeddings=tie, initializer_range=0.2, **overrides)).to_dict()


def reference_model(hf_config: dict, seed: int = 0) -> torch.nn.Module:
    """The "trainer" copy: a real HF model whose weights are streamed to the engine."""
    return random_model(hf_config, seed)


def state_dict_buckets(model: torch.nn.Module, max_bytes: int = 16_384, skip=()):
    """The model's tensors as weight-sync buckets of at most ``max_bytes``."""
    tensors = {n: t.detach().clone() for n, t in model.state_dict().items() if n not in skip}
    return [[(n, tensors[n]) for n in names]
            for names in plan_buckets([(n, t.nbytes) for n, t in tensors.items()], max_bytes)]
