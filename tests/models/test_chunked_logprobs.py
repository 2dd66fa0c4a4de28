"""Chunked log-probs and entropy (``model.logprob_chunk_tokens``) against the autograd reference:
the same values and gradients of the logits (either output alone, or both), for chunk sizes
that divide the tokens, do not, exceed them, and for TP padding columns; and the memory it was
built for: no fp32 copy of the whole [tokens, vocab] block alive beyond one chunk, forward or
backward, counted by the benchmark's byte counter on real CPU tensors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from megatron_prorl.models.logprobs import token_logprobs

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_long_sequences", ROOT / "bench" / "bench_long_sequences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(dtype=torch.float32, b=3, s=13, v=40):
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(b, s, v, generator=g) * 3).to(dtype).requires_grad_()
    ids = torch.randint(0, 36, (b, s), generator=g)  # columns 36..39 play TP padding
    return logits, ids, torch.randn(b, s - 1, generator=g), torch.randn(b, s - 1, generator=g)


def _value_and_grads(chunk, logits, ids, g_lp, g_ent, use=("logp", "entropy")):
    logprobs, entropy = token_logprobs(logits, ids, 2, 38, 1.3, chunk)  # this rank's columns start at id 2
    loss = sum([(logprobs * g_lp).sum()] * ("logp" in use) + [(entropy * g_ent).sum()] * ("entropy" in use))
    grad, = torch.autograd.grad(loss, logits)
    return logprobs.detach(), entropy.detach(), grad


@pytest.mark.parametrize("chunk", [1, 4, 13, 1000])
@pytest.mark.parametrize("use", [("logp", "entropy"), ("logp",), ("entropy",)])
def test_chunked_matches_the_reference(chunk, use):
    inputs = _inputs()
    ref = _value_and_grads(None, *inputs, use=use)
    got = _value_and_grads(chunk, *inputs, use=use)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ref[2][..., 38:].abs().max() == 0 and ref[2][..., :38].abs().max() > 0  # padding: no gradient


def test_bf16_logits_get_a_bf16_gradient_of_the_same_values():
    inputs = _inputs(torch.bfloat16)
    ref, got = _value_and_grads(None, *inputs), _value_and_grads(5, *inputs)
    assert got[2].dtype == torch.bfloat16
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("backward", [False, True])
def test_no_full_fp32_block_beyond_one_chunk(backward):
    """Tokens x vocab = 512 x 3000 (one fp32 block 6 MB), chunks of 32 tokens: chunked, the peak is
    the logits (and, in backward, their gradient) plus a few chunk-sized blocks; unchunked,
    several whole blocks more."""
    bench = _bench()
    tokens, vocab, chunk = 512, 3000, 32
    block = tokens * vocab * 4
    held = block + tokens * 8  # the logits and the token ids
    full = bench.logprob_peak(tokens, vocab, None, torch.float32, backward, device="cpu")
    chunked = bench.logprob_peak(tokens, vocab, chunk, torch.float32, backward, device="cpu")
    grad = block if backward else 0
    assert chunked - held - grad < 0.5 * block  # 32 / 512 of a block per fp32 copy
    assert full - held - grad > 3 * block
    # The meta device (what the benchmark measures at 16k tokens) counts the same bytes.
    assert bench.logprob_peak(tokens, vocab, chunk, torch.float32, backward) == chunked
