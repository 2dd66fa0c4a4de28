"""Tiny Hugging Face models for the tests and the benchmarks, built from configs (no downloads).

- :data:`QWEN2`, :data:`LLAMA3`: small config.json dicts of the two supported families. A test
  that needs another shape states only how it differs: ``dict(QWEN2, num_hidden_layers=4)``.
- :func:`random_model`: transformers' model of such a config with random weights.
- :func:`write_hf_dir`: that model, with the project's byte tokenizer
  (:func:`megatron_prorl.tokenizer.build_byte_tokenizer`, the one tokenizer of the tests, the
  benchmarks and the shipped tiny model), written as a Hugging Face directory.

The benchmarks import this module with tests/ on sys.path (bench/gpu/gpu_common.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

# The byte tokenizer's ids (megatron_prorl/tokenizer.py; tests/test_tiny_model.py checks them).
PAD, EOS = 0, 1

QWEN2 = dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=100, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1e6,
             tie_word_embeddings=True, eos_token_id=EOS, pad_token_id=PAD)
LLAMA3 = dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=100, rms_norm_eps=1e-5, rope_theta=500000.0,
              max_position_embeddings=256, tie_word_embeddings=False,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64})


def random_model(hf_config: dict, seed: int = 0, *, every_tensor: bool = False, dtype: torch.dtype = torch.float32,
                 device: str = "cpu") -> torch.nn.Module:
    """transformers' model of ``hf_config`` in eval mode, with transformers' random init
    (std = initializer_range) from ``seed``; with ``every_tensor``, every tensor drawn afresh
    (norm weights 1 + 0.2 N, biases 0.1 N, the rest 0.05 N), so that a mapping that misplaces
    any tensor, a norm or a bias included, changes the logits. Drawn in fp32, then cast."""
    from transformers import AutoModelForCausalLM

    from megatron_prorl.rollout.hf_engine import config_from_dict

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config_from_dict(hf_config),
                                                 dtype=torch.float32 if every_tensor else dtype)
    if every_tensor:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                else:
                    p.normal_(0, 0.1 if name.endswith("bias") else 0.05)
    return model.to(dtype).eval()


def write_hf_dir(out: str | Path, hf_config: dict, seed: int = 0, *, tokenizer: bool = True,
                 max_shard_size: Optional[str] = None, **model: object) -> Path:
    """:func:`random_model` (``model``: its keyword options) saved into ``out`` with
    transformers' ``save_pretrained`` (sharded at ``max_shard_size`` when given), plus the byte
    tokenizer unless ``tokenizer`` is False (its ids must fit the vocabulary)."""
    out = Path(out)
    if tokenizer:
        from megatron_prorl.tokenizer import build_byte_tokenizer

        tok = build_byte_tokenizer()
        if len(tok) > hf_config["vocab_size"]:
            raise ValueError(f"the byte tokenizer's {len(tok)} ids do not fit vocab_size={hf_config['vocab_size']}: "
                             "pass tokenizer=False or a larger vocabulary")
    shards = {"max_shard_size": max_shard_size} if max_shard_size else {}
    random_model(hf_config, seed, **model).save_pretrained(out, **shards)
    if tokenizer:
        tok.save_pretrained(out)
    return out
