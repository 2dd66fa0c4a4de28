"""Log-probs, entropy, loss and gradients under TP=2, PP=2, TP2xPP2 and DP=2 match TP=1.

Every layout runs real Megatron-Core on spawned gloo ranks, starts from the same random Qwen2
(a transformers model saved to disk, loaded through checkpoint_convert), and scores the same
batch. Gradients are compared in Hugging Face naming, gathered with the weight-export path.
"""

from __future__ import annotations

import pytest
import torch

from helpers.hf_models import QWEN2, write_hf_dir
from megatron_prorl.runtime.launch import spawn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LAYOUTS = {"tp2": (2, 1, 1), "pp2": (1, 2, 1), "tp2pp2": (2, 2, 1), "dp2": (1, 1, 2)}
N_SEQ = 8


def _batch(vocab: int):
    from megatron_prorl.train.batch import from_sequences

    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(1, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(N_SEQ)]
    responses = [torch.randint(1, vocab, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(N_SEQ)]
    return from_sequences(prompts, responses, torch.randn(N_SEQ, generator=g))


def _grads_in_hf_names(actor) -> dict[str, torch.Tensor]:
    """Full gradients by HF name: swap each parameter's data with its reduced main_grad and run
    the weight export (which gathers over TP and PP)."""
    from megatron_prorl.weight_sync import export_to_first_rank

    module = actor.policy_module
    saved = {}
    for p in module.parameters():
        saved[p] = p.data
        p.data = p.main_grad.to(p.dtype)
    try:
        return {n: t.clone() for bucket in export_to_first_rank(module, actor.arch, 1 << 20) for n, t in bucket}
    finally:
        for p, data in saved.items():
            p.data = data


def _run_layout(hf_dir: str, tp: int, pp: int):
    from megatron.core import parallel_state as ps

    from checkpoint_convert import load_arch, load_hf_weights

    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed

    cfg = ProRLConfig()
    cfg.model.hf_dir = hf_dir
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1  # one optimizer step
    cfg.batch.micro_batch_size = 3  # uneven: exercises padding rows
    cfg.algo.kl_beta, cfg.algo.entropy_coef = 0.05, 0.01
    init_distributed(cfg.parallel)
    try:
        arch = load_arch(hf_dir)
        actor = PolicyActor(cfg, arch)
        load_hf_weights(actor.policy_module, arch, hf_dir)
        actor.reset_reference(step=0, reason="start")

        full = _batch(arch.vocab_size)
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        rows = torch.arange(N_SEQ).tensor_split(dp)[dp_rank]
        batch = full.select(rows)
        logprobs, entropy = actor.forward_logprobs(batch, cfg.rollout.temperature)
        if logprobs is not None:
            # A reference and an old policy that differ from the current one make KL and ratios
            # (and both clip sides) non-trivial; indexed globally so every layout sees the same.
            wave = (rows[:, None] * logprobs.shape[1] + torch.arange(logprobs.shape[1])).float()
            batch.ref_logprobs = logprobs - 0.1 * wave.sin()
            batch.old_logprobs = logprobs + 0.3 * wave.cos()
        metrics = actor.forward_backward(batch, cfg.rollout.temperature, cfg.algo.kl_beta)
        grads = _grads_in_hf_names(actor)
        last = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        return {
            "dp_rank": dp_rank,
            "logprobs": logprobs if last else None,
            "entropy": entropy if last else None,
            "mask": batch.loss_mask,
            "metrics": metrics,
            "grads": grads if torch.distributed.get_rank() == 0 else None,
        }
    finally:
        shutdown_distributed()


def _collect(results):
    """Per-layout: logprobs/entropy of all sequences in DP order, metrics, rank-0 grads."""
    per_dp = {r["dp_rank"]: r for r in results if r["logprobs"] is not None}
    order = [per_dp[d] for d in sorted(per_dp)]
    return {
        "logprobs": torch.cat([r["logprobs"] for r in order]),
        "entropy": torch.cat([r["entropy"] for r in order]),
        "mask": torch.cat([r["mask"] for r in order]),
        "metrics": results[0]["metrics"],
        "grads": results[0]["grads"],
    }


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    # 4 layers for PP=2; every tensor drawn (norms and biases too), so every mapping matters.
    config = dict(QWEN2, num_hidden_layers=4, tie_word_embeddings=False)
    return str(write_hf_dir(tmp_path_factory.mktemp("qwen2") / "hf", config, seed=0, every_tensor=True,
                            tokenizer=False))


@pytest.fixture(scope="module")
def baseline(hf_model_dir):
    return _collect(spawn(_run_layout, 1, hf_model_dir, 1, 1))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_tp1(layout, hf_model_dir, baseline):
    tp, pp, dp = LAYOUTS[layout]
    got = _collect(spawn(_run_layout, tp * pp * dp, hf_model_dir, tp, pp))
    mask = baseline["mask"].bool()
    assert torch.equal(got["mask"], baseline["mask"])
    torch.testing.assert_close(got["logprobs"][mask], baseline["logprobs"][mask], rtol=0, atol=2e-5)
    torch.testing.assert_close(got["entropy"][mask], baseline["entropy"][mask], rtol=0, atol=2e-5)
    for name in ("loss", "pg_loss", "kl", "entropy", "clip_frac_low", "clip_frac_high", "clip_frac_dual", "ratio_mean",
                 "ratio_max"):
        assert got["metrics"][name] == pytest.approx(baseline["metrics"][name], rel=1e-5, abs=1e-6), name
    assert got["grads"].keys() == baseline["grads"].keys()
    for name, grad in baseline["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().max() > 0 for g in baseline["grads"].values())


def test_baseline_is_nontrivial(baseline):
    m = baseline["metrics"]
    assert m["kl"] > 0 and m["entropy"] > 0 and m["clip_frac_low"] + m["clip_frac_high"] > 0
