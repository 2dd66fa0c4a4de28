"""Pure parts: nucleus mask, the sampler's distribution and log-probs, bucketing, HF export."""

from __future__ import annotations

import json

import pytest
import torch
from rollout_models import qwen2_config, reference_model, state_dict_buckets
from transformers import AutoModelForCausalLM

from megatron_prorl.rollout.hf_export import engine_named_tensors, write_hf_dir
from megatron_prorl.rollout.sampling import prompt_uniforms, sample_tokens, temperature_logprobs, top_p_keep_mask


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    lp = probs.log()
    assert top_p_keep_mask(lp, 0.7).tolist() == [[False, True, False, True]]
    assert top_p_keep_mask(lp, 0.45).tolist() == [[False, True, False, False]]
    assert top_p_keep_mask(lp, 0.81).tolist() == [[True, True, False, True]]
    assert top_p_keep_mask(lp, 1e-6).tolist() == [[False, True, False, False]]  # top token always kept


def test_sampler_draws_from_softmax_over_t_and_reports_its_logprobs():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).repeat(40_000, 1)
    tokens, logprobs = sample_tokens(logits, temperature=1.2, top_p=1.0, uniforms=prompt_uniforms(0, 40_000, 1)[:, 0])
    expected = torch.softmax(logits[0] / 1.2, dim=-1)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(logprobs, temperature_logprobs(logits, 1.2)[torch.arange(len(tokens)), tokens])
    # Nucleus: only the kept tokens are drawn, in renormalised proportions.
    tokens, logprobs = sample_tokens(logits, 1.2, 0.6, prompt_uniforms(1, 40_000, 1)[:, 0])
    kept = top_p_keep_mask(temperature_logprobs(logits[:1], 1.2), 0.6)[0]
    assert set(tokens.tolist()) == set(kept.nonzero().squeeze(-1).tolist())
    renorm = expected * kept / (expected * kept).sum()
    torch.testing.assert_close(torch.bincount(tokens, minlength=4).float() / len(tokens), renorm, atol=0.01, rtol=0)


def test_a_draw_at_the_top_of_the_cdf_stays_on_a_token_with_mass():
    # u == total (what float rounding of rand * total can give) must not select the
    # zero-mass tokens after the nucleus or run past the vocabulary.
    logits = torch.tensor([[0.0, 3.0, 2.0, -5.0], [1.0, 1.0, 1.0, 1.0]])
    tokens, _ = sample_tokens(logits, 1.0, 0.9, torch.ones(2))
    keep = top_p_keep_mask(temperature_logprobs(logits, 1.0), 0.9)
    assert keep[0, tokens[0]] and tokens[1] == 3


def test_hf_export_round_trips_through_from_pretrained(tmp_path):
    cfg = qwen2_config(tie=True)
    ref = reference_model(cfg, seed=3)
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"stale")  # source weights are not copied
    out = tmp_path / "export"
    buckets = [engine_named_tensors(b, tie_word_embeddings=True) for b in state_dict_buckets(ref)]
    assert all(n != "lm_head.weight" for b in buckets for n, _ in b)
    stats = write_hf_dir(out, cfg, buckets, copy_from=src)
    assert stats.buckets == len(buckets) > 1
    assert (out / "tokenizer.json").exists() and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ref.state_dict()) - {"lm_head.weight"}
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for name, tensor in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # A second export into the same directory replaces the shards (fewer, bigger buckets here).
    write_hf_dir(out, cfg, [engine_named_tensors(b, True) for b in state_dict_buckets(ref, max_bytes=1 << 30)])
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model-00001.safetensors"]
    with pytest.raises(ValueError, match="'model.norm.weight' was sent twice"):
        write_hf_dir(out, cfg, [[("model.norm.weight", torch.ones(64))], [("model.norm.weight", torch.ones(64))]])
