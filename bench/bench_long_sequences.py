"""Long, uneven responses: the update with fixed micro-batches, a token budget and packed
sequences; the log-prob pass's peak memory with and without chunked log-probs.

    python bench/bench_long_sequences.py [--scale 64 --hidden 32 --rounds 1]

**Update** (TP1, CPU, fp32, one process): a mini-batch of 64 responses through one optimizer
update (``PolicyActor.update``: forward, backward, step), timed per mode, side by side in one
run, with the padding fraction of the tokens the model computed:

- fixed: ``batch.micro_batch_size=1`` (what the 1.5B config used for its 16k responses), each
  row padded to the mini-batch's longest sequence;
- token budget: ``batch.max_tokens_per_micro_batch`` = twice the longest possible sequence (the
  1.5B config's ratio), rows sorted and grouped;
- packed: the same budget, ``batch.pack_sequences=true``.

All three use ``model.logprob_chunk_tokens`` (so the fixed rows fit in memory at all); only the
micro-batching differs. The model is a Qwen2 with Qwen's real vocabulary (151,936) and a tiny
body (2 layers, ``--hidden``), so the vocabulary-sized work per token, which padding multiplies,
dominates as it does in the real model's log-prob and loss path.

Lengths: response lengths are long-tailed, lognormal with median cap/6 and sigma 0.9, capped at
the response cap, with two responses at the cap. That is the shape ProRL (arXiv 2505.24864)
describes rather than a fit to its figures: most responses far below the 8k, then 16k, cap and
a tail that reaches it (the paper's runs 4-5 penalise responses cut at the cap); its mean is a
quarter of the cap. Prompts are uniform in [cap/64, cap/8]. The cap is ProRL's 16k divided by
``--scale`` (64: 256 response tokens; every token costs the 151,936-column output layer and
log-softmax forward and backward, ~12 ms on one loaded core, so the fixed baseline's padded
tokens decide the run time); the padding fraction depends on the distribution's shape, not its
scale, and at full scale the fixed rows also pay attention over padded positions (quadratic),
so the speed-up measured here is a lower bound of the full-scale one.

**Log-prob pass peak** at one 16,384-token sequence, vocabulary 151,936 (TP1): the forward-only
pass that computes old and reference log-probs with entropy (``token_logprobs``), and the
training loss path (forward and backward through the same function), with chunking off and at
1,024 tokens per chunk. Measured on the meta device (shapes and bytes, no data: the unchunked
pass would need ~60 GB) by a TorchDispatchMode that adds every tensor storage an op returns and
subtracts it when the storage is freed; the logits themselves (the model's output, fp32 on CPU,
bf16 on GPU) count from the start. The same counter on real CPU tensors gives the same bytes
(checked at a small size in tests/models/test_chunked_logprobs.py).
"""

from __future__ import annotations

import argparse
import math
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

VOCAB = 151_936  # Qwen2 / DeepSeek-R1-Distill-Qwen-1.5B
PRORL_CAP = 16_384
RESPONSES = 64
CHUNK = 1024


class PeakBytes(TorchDispatchMode):
    """Live and peak bytes of the tensor storages seen: ``held`` ones from the start, then every
    storage an op returns, each until it is freed."""

    def __init__(self, *held: torch.Tensor):
        super().__init__()
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self.now = self.peak = 0
        for t in held:
            self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is not None and entry[0]() is storage:
            return
        nbytes = storage.nbytes()

        def freed(ref, key=key, nbytes=nbytes):
            if self._live.get(key, (None,))[0] is ref:
                del self._live[key]
                self.now -= nbytes

        self._live[key] = (weakref.ref(storage, freed), nbytes)
        self.now += nbytes
        self.peak = max(self.peak, self.now)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def logprob_peak(tokens: int, vocab: int, chunk, dtype: torch.dtype, backward: bool, device: str = "meta") -> int:
    """Peak bytes of :func:`token_logprobs` (with entropy) over one sequence of ``tokens`` tokens
    whose logits are ``dtype``; with ``backward``, through the gradient of the logits too."""
    from megatron_prorl.models.logprobs import token_logprobs

    if device == "meta":
        logits = torch.empty((1, tokens, vocab), dtype=dtype, device=device, requires_grad=backward)
        ids = torch.zeros((1, tokens), dtype=torch.long, device=device)
    else:
        g = torch.Generator().manual_seed(0)
        logits = torch.randn((1, tokens, vocab), generator=g).to(dtype).requires_grad_(backward)
        ids = torch.randint(0, vocab, (1, tokens), generator=g)
    with PeakBytes(logits, ids) as counter, torch.set_grad_enabled(backward):
        logprobs, entropy = token_logprobs(logits, ids, 0, vocab, 1.2, chunk)
        if backward:
            (logprobs.sum() + entropy.sum()).backward()
        del logprobs, entropy
    return counter.peak


def response_lengths(n: int, cap: int, seed: int = 0) -> list[int]:
    """Long-tailed response lengths in [1, cap] (see the module docstring), two at the cap."""
    g = torch.Generator().manual_seed(seed)
    median, sigma = cap / 6, 0.9
    raw = torch.exp(math.log(median) + sigma * torch.randn(n, generator=g))
    lengths = raw.round().clamp(1, cap).long().tolist()
    lengths[0] = lengths[1] = cap
    return lengths


def _model(hidden: int) -> dict:
    return dict(model_type="qwen2", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=PRORL_CAP,
                rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False)


def _update_run(cap: int, hidden: int, rounds: int) -> dict:
    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.train.batch import from_sequences, padding_fraction, round_up

    g = torch.Generator().manual_seed(1)
    responses = response_lengths(RESPONSES, cap)
    prompt_cap = cap // 8
    prompts = torch.randint(cap // 64, prompt_cap + 1, (RESPONSES,), generator=g).tolist()
    budget = 2 * round_up(prompt_cap + cap)
    cfg = ProRLConfig()
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1  # one update per call
    cfg.batch.micro_batch_size = 1
    cfg.model.logprob_chunk_tokens = CHUNK
    cfg.optim.lr = 1e-7
    init_distributed(cfg.parallel)
    try:
        torch.manual_seed(0)
        actor = PolicyActor(cfg, hf_arch(_model(hidden)))
        batch = from_sequences([torch.randint(1, VOCAB, (p,), generator=g).tolist() for p in prompts],
                               [torch.randint(1, VOCAB, (r,), generator=g).tolist() for r in responses],
                               torch.randn(RESPONSES, generator=g))
        real = sum(p + r for p, r in zip(prompts, responses))
        modes = {"fixed": (None, False), "token budget": (budget, False), "packed": (budget, True)}
        cfg.batch.max_tokens_per_micro_batch, cfg.batch.pack_sequences = budget, True
        batch.old_logprobs, _ = actor.forward_logprobs(batch, 1.2)
        out = {name: {"seconds": []} for name in modes}
        for _ in range(rounds):
            for name, (max_tokens, pack) in modes.items():
                cfg.batch.max_tokens_per_micro_batch, cfg.batch.pack_sequences = max_tokens, pack
                t0 = time.perf_counter()
                actor.update(batch, 1.2, kl_beta=0.0)
                out[name]["seconds"].append(time.perf_counter() - t0)
                micro = actor._micro_batches(batch, logprob_pass=False)
                out[name].update(micro_batches=len(micro), padding=padding_fraction(micro, real))
        out["_batch"] = {"real_tokens": real, "budget": budget, "cap": cap, "mean_response": sum(responses) / RESPONSES,
                         "longest": max(p + r for p, r in zip(prompts, responses))}
        return out
    finally:
        shutdown_distributed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=64, help="ProRL's 16k cap divided by this (default 64)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="updates per mode (the fastest counts)")
    args = parser.parse_args()

    from megatron_prorl.runtime.launch import spawn

    print(f"log-prob pass, one {PRORL_CAP:,}-token sequence, vocabulary {VOCAB:,} (TP1), peak bytes "
          f"(logits included), chunk {CHUNK} tokens:")
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        for backward, what in ((False, "forward only (old/reference log-probs)"), (True, "forward + backward (loss)")):
            full = logprob_peak(PRORL_CAP, VOCAB, None, dtype, backward)
            chunked = logprob_peak(PRORL_CAP, VOCAB, CHUNK, dtype, backward)
            peaks[str(dtype).split(".")[-1], backward] = full / chunked
            print(f"  {str(dtype).split('.')[-1]:8s} logits, {what:40s} unchunked {full / 2**30:6.2f} GiB   "
                  f"chunked {chunked / 2**30:6.2f} GiB   {full / chunked:5.1f}x smaller")

    cap = PRORL_CAP // args.scale
    res = spawn(_update_run, 1, cap, args.hidden, args.rounds, timeout=None)[0]
    info = res.pop("_batch")
    print(f"\nupdate, TP1 CPU fp32, {RESPONSES} responses (mean {info['mean_response']:.0f} tokens, cap {info['cap']}, "
          f"longest sequence {info['longest']}, {info['real_tokens']:,} real tokens), hidden {args.hidden}, "
          f"vocabulary {VOCAB:,}; token budget {info['budget']}:")
    fixed = min(res["fixed"]["seconds"])
    for name, r in res.items():
        best = min(r["seconds"])
        print(f"  {name:13s} {best:7.1f} s/update   {r['micro_batches']:3d} micro-batches   padding "
              f"{100 * r['padding']:5.1f}%   {fixed / best:4.2f}x vs fixed")
    print(f"\ngoals: update >= 2x faster than fixed (token budget {fixed / min(res['token budget']['seconds']):.2f}x, "
          f"packed {fixed / min(res['packed']['seconds']):.2f}x); log-prob pass peak >= 4x smaller with chunking "
          f"(fp32 {peaks['float32', False]:.1f}x, bf16 {peaks['bfloat16', False]:.1f}x)")


if __name__ == "__main__":
    main()
