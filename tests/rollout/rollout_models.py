"""Small real Qwen2 models (transformers, built from a config) for the rollout tests and bench."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from checkpoint_convert.buckets import plan_buckets
from megatron_prorl.rollout.hf_engine import config_from_dict

EOS = 1
PAD = 0
VOCAB = 100


def qwen2_config(tie: bool = True, **overrides) -> dict:
    """hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 100; a wide init so that next-token
    distributions are peaked and depend on the context (a near-uniform model would hide
    position or masking errors in the log-probs)."""
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                tie_word_embeddings=tie, initializer_range=0.2, eos_token_id=EOS, pad_token_id=PAD)
    base.update(overrides)
    return Qwen2Config(**base).to_dict()


def reference_model(hf_config: dict, seed: int = 0) -> torch.nn.Module:
    """The "trainer" copy: a real HF model whose weights are streamed to the engine."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config_from_dict(hf_config), dtype=torch.float32).eval()


def state_dict_buckets(model: torch.nn.Module, max_bytes: int = 16_384, skip=()):
    """The model's tensors as weight-sync buckets of at most ``max_bytes``."""
    tensors = {n: t.detach().clone() for n, t in model.state_dict().items() if n not in skip}
    return [[(n, tensors[n]) for n in names]
            for names in plan_buckets([(n, t.nbytes) for n, t in tensors.items()], max_bytes)]
