"""The transformers engine on small real Qwen2 models: log-probs, determinism, stops, n, sync."""

from __future__ import annotations

import pytest
import torch
from rollout_models import qwen2_config, reference_model, state_dict_buckets

from helpers.hf_models import EOS, PAD
from megatron_prorl.config import ConfigError, RolloutConfig
from megatron_prorl.train.validate import load_run_config
from megatron_prorl.rollout import SamplingParams, build_engine, build_engine_from_config
from megatron_prorl.rollout.hf_engine import TransformersEngine

# Different lengths so shorter prompts are left-padded inside one batch.
PROMPTS = [[5, 17, 42], [7, 8, 9, 10, 11, 12, 13], [64], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]


def recomputed_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """What the trainer does: one forward over prompt + response (no cache, no padding),
    log_softmax(logits / T) at the positions that predict the response tokens."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits / temperature, dim=-1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return lp[pos, torch.tensor(response)]


def assert_logprobs_match(samples, ref, prompts, temperature):
    for s in samples:
        expected = recomputed_logprobs(ref, prompts[s.prompt_index], s.token_ids, temperature)
        torch.testing.assert_close(s.logprobs, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("max_batch_size", [None, 5])
def test_logprobs_at_temperature_match_a_full_forward(tied_setup, max_batch_size):
    cfg, ref, engine = tied_setup
    engine.max_batch_size = max_batch_size
    try:
        samples = engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.2, max_new_tokens=24, seed=7))
    finally:
        engine.max_batch_size = None
    assert sum(len(s.token_ids) for s in samples) > 100
    assert_logprobs_match(samples, ref, PROMPTS, 1.2)
    # The recorded values are at T = 1.2, not at T = 1: they would not match the latter.
    s = max(samples, key=lambda s: len(s.token_ids))
    at_one = recomputed_logprobs(ref, PROMPTS[s.prompt_index], s.token_ids, 1.0)
    assert (s.logprobs - at_one).abs().max() > 1e-2


def test_chunks_hold_prompts_of_similar_length_and_samples_keep_the_prompt_order(tied_setup, monkeypatch):
    """max_batch_size 6 with n=3: two prompts per chunk, the longest two together (their left
    padding is what every decoding step attends over), samples back in the prompts' order."""
    cfg, ref, engine = tied_setup
    chunks = []
    real = TransformersEngine._generate_chunk

    def spy(self, prompts, indices, *args):
        chunks.append([len(p) for p in prompts])
        return real(self, prompts, indices, *args)

    monkeypatch.setattr(TransformersEngine, "_generate_chunk", spy)
    engine.max_batch_size = 6
    try:
        samples = engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.2, max_new_tokens=8, seed=7))
    finally:
        engine.max_batch_size = None
    assert chunks == [[12, 7], [3, 1]]
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(p, j) for p in range(4) for j in range(3)]
    assert_logprobs_match(samples, ref, PROMPTS, 1.2)


def test_top_p_samples_inside_the_nucleus_and_records_untruncated_logprobs(tied_setup):
    cfg, ref, engine = tied_setup
    top_p = 0.5
    samples = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.2, top_p=top_p, max_new_tokens=16, seed=3))
    assert_logprobs_match(samples, ref, PROMPTS, 1.2)
    for s in samples:
        ids = torch.tensor([PROMPTS[s.prompt_index] + s.token_ids])
        with torch.no_grad():
            lp = torch.log_softmax(ref(input_ids=ids).logits[0].float() / 1.2, dim=-1)
        for i, tok in enumerate(s.token_ids):
            probs = lp[len(PROMPTS[s.prompt_index]) - 1 + i].exp()
            # Mass of the tokens strictly more probable than the sampled one is below top_p.
            assert probs[probs > probs[tok]].sum() < top_p


def test_same_seed_same_outputs_other_seed_differs(tied_setup):
    _, _, engine = tied_setup
    params = SamplingParams(n=4, temperature=1.2, max_new_tokens=16, seed=11)
    a, b = engine.generate(PROMPTS, params), engine.generate(PROMPTS, params)
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    assert all(torch.equal(x.logprobs, y.logprobs) for x, y in zip(a, b))
    c = engine.generate(PROMPTS, SamplingParams(n=4, temperature=1.2, max_new_tokens=16, seed=12))
    assert [s.token_ids for s in a] != [s.token_ids for s in c]


def test_n_samples_grouped_by_prompt_and_distinct(tied_setup):
    _, _, engine = tied_setup
    samples = engine.generate(PROMPTS, SamplingParams(n=5, temperature=1.2, max_new_tokens=12, seed=0))
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(p, j) for p in range(4) for j in range(5)]
    for p in range(4):
        group = {tuple(s.token_ids) for s in samples[5 * p:5 * p + 5]}
        assert len(group) > 1  # the n samples are separate draws, not copies


def test_finish_reasons_eos_and_length(tied_setup):
    _, _, engine = tied_setup
    max_new = 20
    samples = engine.generate(PROMPTS * 8, SamplingParams(n=8, temperature=1.2, max_new_tokens=max_new, seed=5))
    reasons = {s.finish_reason for s in samples}
    assert reasons == {"eos", "length"}, reasons
    for s in samples:
        assert EOS not in s.token_ids[:-1]  # generation stops at the first EOS
        if s.finish_reason == "eos":
            assert s.token_ids[-1] == EOS and len(s.logprobs) == len(s.token_ids)
        else:
            assert len(s.token_ids) == max_new and s.token_ids[-1] != EOS


def test_stop_tokens_end_the_response_and_are_kept(tied_setup):
    cfg, ref, engine = tied_setup
    stops = tuple(range(40, 70))
    samples = engine.generate(PROMPTS, SamplingParams(n=4, temperature=1.2, max_new_tokens=30,
                                                      stop_token_ids=stops, seed=2))
    stopped = [s for s in samples if s.finish_reason == "stop"]
    assert stopped, "with 30 of 100 tokens as stop tokens some responses must stop on one"
    for s in samples:
        assert not set(s.token_ids[:-1]) & (set(stops) | {EOS})
        if s.finish_reason == "stop":
            assert s.token_ids[-1] in stops
    assert_logprobs_match(stopped, ref, PROMPTS, 1.2)  # the stop token has its log-prob too


def test_untied_model_sync_and_incremental_equals_reference():
    cfg = qwen2_config(tie=False)
    ref = reference_model(cfg, seed=1)
    engine = build_engine("transformers", hf_config=cfg, eos_token_ids=[EOS], pad_token_id=PAD)
    stats = engine.update_weights(state_dict_buckets(ref, max_bytes=10_000))
    assert stats.tensors == len(ref.state_dict())
    assert stats.bytes == sum(t.numel() * t.element_size() for t in ref.state_dict().values())
    assert stats.buckets > 3
    samples = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.7, max_new_tokens=10, seed=0))
    assert_logprobs_match(samples, ref, PROMPTS, 0.7)


def test_weight_sync_rejects_bad_names_shapes_and_incomplete_syncs():
    cfg = qwen2_config(tie=True)
    ref = reference_model(cfg)
    engine = TransformersEngine(cfg, eos_token_ids=EOS)
    with pytest.raises(KeyError, match="model.layers.9.mlp.up_proj.weight"):
        engine.update_weights([[("model.layers.9.mlp.up_proj.weight", torch.zeros(128, 64))]])
    with pytest.raises(ValueError, match=r"model.norm.weight.*\(63,\).*\(64,\)"):
        engine.update_weights([[("model.norm.weight", torch.zeros(63))]])
    buckets = list(state_dict_buckets(ref, skip=("lm_head.weight", "model.norm.weight")))
    with pytest.raises(ValueError, match="incomplete.*model.norm.weight"):
        engine.update_weights(buckets)
    engine.update_weights(buckets, complete=False)  # a partial update is allowed when asked for
    # Tied embeddings: sending lm_head.weight instead of the embedding covers both names.
    swapped = [[("lm_head.weight" if n == "model.embed_tokens.weight" else n, t) for n, t in b]
               for b in state_dict_buckets(ref, skip=("lm_head.weight",))]
    engine.update_weights(swapped)
    for name, tensor in ref.state_dict().items():
        assert torch.equal(engine.model.state_dict()[name], tensor), name


def test_sleep_wake_and_registry(tied_setup):
    cfg, _, engine = tied_setup
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(PROMPTS, SamplingParams())
    engine.wake()
    assert len(engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))) == 1
    built = build_engine_from_config(RolloutConfig(engine="transformers", engine_max_batch_size=32), hf_config=cfg,
                                     hf_dir=None, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu",
                                     dtype=torch.float32)
    assert isinstance(built, TransformersEngine) and built.max_batch_size == 32
    with pytest.raises(ConfigError, match="rollout.engine_max_batch_size=0"):
        load_run_config(overrides=["rollout.engine_max_batch_size=0"])
    with pytest.raises(ValueError, match="unknown rollout engine 'vllm'; known: tensorrt_llm, transformers"):
        build_engine("vllm")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[3], []], SamplingParams())
