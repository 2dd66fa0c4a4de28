"""The shared tiny models: written directories load back as written, with the byte tokenizer
whose ids the configs name; every_tensor draws norms and biases too; bad pairings are refused."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.hf_models import EOS, PAD, QWEN2, random_model, write_hf_dir
from megatron_prorl.tokenizer import build_byte_tokenizer


def test_the_configs_ids_are_the_byte_tokenizers():
    tok = build_byte_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id) == (PAD, EOS) == (QWEN2["pad_token_id"], QWEN2["eos_token_id"])


def test_a_written_directory_loads_back_bit_for_bit(tmp_path):
    config = dict(QWEN2, vocab_size=300)
    out = write_hf_dir(tmp_path / "hf", config, seed=3, dtype=torch.bfloat16, max_shard_size="60KB")
    assert len(list(out.glob("model-*.safetensors"))) > 1
    loaded = AutoModelForCausalLM.from_pretrained(out)
    want = random_model(config, seed=3, dtype=torch.bfloat16).state_dict()
    assert loaded.dtype == torch.bfloat16 and loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(loaded.state_dict()[n], t) for n, t in want.items())
    assert AutoTokenizer.from_pretrained(out)("ab").input_ids == [5 + ord("a"), 5 + ord("b")]


def test_every_tensor_draws_norms_and_biases():
    default, drawn = random_model(QWEN2).state_dict(), random_model(QWEN2, every_tensor=True).state_dict()
    for name in ("model.norm.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert default[name].std() == 0 and drawn[name].std() > 0.05, name
    assert torch.equal(random_model(QWEN2, seed=1).state_dict()["lm_head.weight"],
                       random_model(QWEN2, seed=1).state_dict()["lm_head.weight"])


def test_a_vocabulary_too_small_for_the_tokenizer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="261 ids do not fit vocab_size=100"):
        write_hf_dir(tmp_path / "hf", QWEN2)
    assert not (tmp_path / "hf").exists()
    assert (write_hf_dir(tmp_path / "hf", QWEN2, tokenizer=False) / "config.json").is_file()
