"""Token-budget micro-batches, packed sequences and chunked log-probs change nothing but speed and
memory: log-probs, entropy, loss metrics and gradients equal the fixed-micro-batch, unpacked,
unchunked reference within 1e-5 relative (fp32, real Megatron-Core on spawned gloo ranks) at TP1,
TP2, PP2 and DP2, on a batch of very uneven lengths: one sequence alone at the cap (it fills a
micro-batch), empty responses, responses of one token.

Each layout builds one actor and runs every mode on it, for token-mean and seq-mean-token-mean
aggregation (a packed row holds several sequences: a per-row mean would be wrong). At DP2 the
budget modes first deal the rows anew over the ranks (``PolicyActor.balance``), as the trainer
does; one mode skips that, and there the two ranks run different numbers of micro-batches.
"""

from __future__ import annotations

import pytest
import torch

from helpers.hf_models import QWEN2
from megatron_prorl.runtime.launch import spawn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T = 1.2
CAP = 64  # max_prompt_length 16 + max_response_length 48: one sequence reaches it
# (prompt, response) lengths: very uneven, the cap, empty responses, one-token responses.
SHAPES = [(16, 48), (5, 0), (8, 30), (4, 1), (10, 12), (6, 40), (3, 0), (12, 20), (2, 5), (9, 33), (5, 7), (7, 1)]
MODES = {  # name -> (max_tokens_per_micro_batch, logprob budget, pack_sequences, logprob_chunk_tokens, balance)
    "fixed-chunked": (None, None, False, 7, False),
    "budget": (CAP, 2 * CAP, False, None, True),
    "budget-unbalanced": (CAP, None, False, None, False),
    "packed": (CAP, 2 * CAP, True, None, True),
    "packed-chunked": (CAP, CAP, True, 5, True),
    "budget-chunked": (CAP, 2 * CAP, False, 16, True),
}
LAYOUTS = {"tp1": (1, 1, 1), "tp2": (2, 1, 1), "pp2": (1, 2, 1), "dp2": (1, 1, 2)}
AGGS = ("token-mean", "seq-mean-token-mean")


def _batch(vocab: int):
    """The whole batch; advantages are distinct, so a row is known by its advantage."""
    from megatron_prorl.train.batch import from_sequences

    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(1, vocab, (p,), generator=g).tolist() for p, _ in SHAPES]
    responses = [torch.randint(1, vocab, (r,), generator=g).tolist() for _, r in SHAPES]
    advantages = torch.linspace(-1.5, 1.4, len(SHAPES))[torch.randperm(len(SHAPES), generator=g)]
    engine = [(-torch.rand(r, generator=g) * 3).tolist() for _, r in SHAPES]
    return from_sequences(prompts, responses, advantages, engine_logprobs=engine)


def _grads(actor) -> list[torch.Tensor]:
    return [p.main_grad.detach().clone() for p in actor.policy_module.parameters()]


def _run_mode(actor, batch, mode):
    """(per-row outputs keyed by advantage, metrics, grads, micro-batch count of the update)."""
    from megatron_prorl.algo import PolicyObjective

    b, m = actor.cfg.batch, actor.cfg.model
    budget, lp_budget, pack, chunk, balance = MODES.get(mode, (None, None, False, None, False))
    b.max_tokens_per_micro_batch, b.max_tokens_per_logprob_micro_batch = budget, lp_budget
    b.pack_sequences, m.logprob_chunk_tokens = pack, chunk
    if balance:
        batch = actor.balance(batch)
    logprobs, entropy = actor.forward_logprobs(batch, T)
    out = {}
    for agg in AGGS:
        actor.cfg.algo.loss_agg = agg
        actor.objective = PolicyObjective.from_config(actor.cfg.algo)
        if logprobs is not None:
            # An old policy and a reference away from the current one (KL, ratios, both clips),
            # a function of each row's own values so that every mode sees the same.
            key = batch.advantages[:, None] * 7 + torch.arange(logprobs.shape[1])
            batch.old_logprobs = logprobs + 0.3 * key.cos()
            batch.ref_logprobs = logprobs - 0.2 * key.sin()
        metrics = actor.forward_backward(batch, T, kl_beta=0.05)
        out[agg] = (metrics, _grads(actor))
    rows = {}
    if logprobs is not None:
        for i, adv in enumerate(batch.advantages.tolist()):
            mask = batch.loss_mask[i].bool()
            rows[round(adv, 6)] = (logprobs[i][mask], entropy[i][mask])
    return rows, out, len(actor._micro_batches(batch, logprob_pass=False))


def _layout(tp: int, pp: int):
    from megatron.core import parallel_state as ps

    from checkpoint_convert.arch import hf_arch
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed, shutdown_distributed
    from megatron_prorl.train.actor import PolicyActor

    cfg = ProRLConfig()
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    cfg.batch.prompts_per_step = cfg.batch.prompts_per_mini_batch = 1  # one optimizer update
    cfg.batch.micro_batch_size = 5  # the reference: uneven, with padding rows
    cfg.algo.entropy_coef, cfg.algo.tis_cap = 0.01, 2.0  # every term of the objective in the gradient
    init_distributed(cfg.parallel)
    try:
        arch = hf_arch(dict(QWEN2, max_position_embeddings=CAP))
        torch.manual_seed(0)  # Megatron's CPU initialisation draws from torch's generator: same weights on DP ranks
        actor = PolicyActor(cfg, arch)
        full = _batch(arch.vocab_size)
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        mine = full.select(torch.arange(len(full)).tensor_split(dp)[dp_rank])
        results = {mode: _run_mode(actor, mine, mode) for mode in ("reference", *MODES)}
        last = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        return {mode: (rows if last else {}, out, count) for mode, (rows, out, count) in results.items()}
    finally:
        shutdown_distributed()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) if b.numel() else 0.0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_modes_match_the_reference(layout):
    tp, pp, dp = LAYOUTS[layout]
    ranks = spawn(_layout, tp * pp * dp, tp, pp)
    # Per-row outputs from every rank that holds them (each DP rank's last stage, TP rank 0).
    rows = {mode: {k: v for r in ranks for k, v in r[mode][0].items()} for mode in ranks[0]}
    ref_rows = rows["reference"]
    assert len(ref_rows) == len(SHAPES)
    for mode in MODES:
        assert rows[mode].keys() == ref_rows.keys(), mode
        for key, (lp, ent) in ref_rows.items():
            assert _rel(rows[mode][key][0], lp) < 1e-5, (mode, key)
            assert _rel(rows[mode][key][1], ent) < 1e-5, (mode, key)
        for rank in ranks:
            for agg in AGGS:
                ref_metrics, ref_grads = rank["reference"][1][agg]
                metrics, grads = rank[mode][1][agg]
                for name, value in ref_metrics.items():
                    assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), (mode, agg, name)
                for g, ref in zip(grads, ref_grads, strict=True):
                    assert _rel(g, ref) < 1e-5, (mode, agg)
    m = ranks[0]["reference"][1]["token-mean"][0]
    assert m["kl"] > 0 and m["entropy"] > 0 and m["clip_frac_low"] + m["clip_frac_high"] > 0
    assert any(g.abs().max() > 0 for g in ranks[0]["reference"][1]["token-mean"][1])
    # The cap sequence fills a micro-batch alone: with the budget at the cap, the 12 rows need
    # more micro-batches than one; unbalanced DP2 ranks run different numbers of them.
    assert all(r["budget"][2] > 1 for r in ranks)
    if dp == 2:
        assert ranks[0]["budget-unbalanced"][2] != ranks[1]["budget-unbalanced"][2]
        assert ranks[0]["budget"][0].keys() != ranks[0]["reference"][0].keys()  # balance moved rows


PACKED = ("batch.max_tokens_per_micro_batch=144", "batch.max_tokens_per_logprob_micro_batch=288",
          "batch.pack_sequences=true", "model.logprob_chunk_tokens=16")


def test_a_run_with_packing_matches_the_run_without_and_resumes_exactly(reference_run, tmp_path):
    """The 3-step tiny run (helpers.runs; prompts up to 128 tokens + responses up to 12, so 144 is
    the smallest budget it accepts) with packed rows of at most 144 tokens and chunked log-probs:
    the same samples and rewards step after step, the update's metrics to float precision; and
    resumed from its own step-2 checkpoint, its step 3 again, exactly."""
    from helpers.runs import comparable, records, run_ok, write_config

    import yaml

    ref_run, _ = reference_run
    run_ok("train", write_config(tmp_path), *PACKED)
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["batch"]["pack_sequences"] is True and written["model"]["logprob_chunk_tokens"] == 16
    got, want = records(tmp_path / "run"), records(ref_run)
    assert [r["step"] for r in got] == [1, 2, 3]
    for g, w in zip(got, want):
        for key in ("reward/mean", "response_length/mean", "dynamic_sampling/kept", "dynamic_sampling/dropped",
                    "generated_tokens"):
            assert g[key] == w[key], (g["step"], key)
        for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm", "ratio_mean", "logprob_diff/mean"):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (g["step"], key)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    run_ok("train", write_config(resumed, checkpoint__load=str(tmp_path / "run" / "checkpoints" / "step_00000002")),
           *PACKED)
    assert [comparable(r) for r in records(resumed / "run")] == [comparable(r) for r in got[2:]]


def _on_simulated_gpus():
    from helpers.devsim import simulated_cuda

    from megatron_prorl.runtime import device
    from megatron_prorl.runtime.distributed import shutdown_distributed

    # Every tensor labelled with the device it would have on a GPU machine, every collective
    # checked against its group's backend (tests/helpers/devsim.py): the budget, packing,
    # chunking and data-parallel balancing paths must keep indices, cu_seqlens and gathered rows
    # on the rank's GPU, and reduce over NCCL groups GPU tensors only.
    with simulated_cuda() as sim:
        from checkpoint_convert.arch import hf_arch
        from megatron_prorl.config import ProRLConfig
        from megatron_prorl.runtime.distributed import init_distributed
        from megatron_prorl.train.actor import PolicyActor

        cfg = ProRLConfig()
        cfg.batch.prompts_per_step, cfg.batch.prompts_per_mini_batch = 2, 1  # two updates, two mini-batches
        cfg.batch.max_tokens_per_micro_batch, cfg.batch.max_tokens_per_logprob_micro_batch = CAP, 2 * CAP
        cfg.batch.pack_sequences, cfg.model.logprob_chunk_tokens = True, 5
        cfg.algo.entropy_coef = 0.01
        init_distributed(cfg.parallel)
        torch.manual_seed(0)
        actor = PolicyActor(cfg, hf_arch(dict(QWEN2, max_position_embeddings=CAP)))
        from megatron.core import parallel_state as ps

        full = _batch(QWEN2["vocab_size"])
        dp_rank = ps.get_data_parallel_rank()
        batch = actor.balance(device.to_current(full.select(torch.arange(len(full)).tensor_split(2)[dp_rank])))
        batch.old_logprobs, _ = actor.forward_logprobs(batch, T)
        batch.ref_logprobs, _ = actor.forward_logprobs(batch, T, "reference")
        metrics = actor.update(batch, T, kl_beta=0.05)
        # What Transformer Engine reads (cu_seqlens) and the loss indexes with must be on the GPU:
        # the local attention's .tolist() would not notice a CPU tensor.
        placed = {f"batch.{name}": sim.device_of(t) for name, t in vars(batch).items() if t is not None}
        for i, mb in enumerate(actor._micro_batches(batch, logprob_pass=False)):
            placed.update({f"micro_batch[{i}].{k}": sim.device_of(v) for k, v in mb.items() if torch.is_tensor(v)})
        here = f"cuda:{sim.current}"
        shutdown_distributed()
    return metrics, placed, here, actor.state.updates


def test_budget_packing_chunking_and_balance_on_simulated_gpus():
    """DP2 on the simulated device: the whole update path (balance over the NCCL data-parallel
    group, log-prob passes, two mini-batch updates, packed rows, chunked log-probs) runs with
    every tensor where a GPU run puts it."""
    for metrics, placed, here, updates in spawn(_on_simulated_gpus, 2):
        assert updates == 2 and metrics["update_skipped"] == 0 and metrics["grad_norm"] > 0
        assert "micro_batch[0].cu_seqlens" in placed
        assert {k: v for k, v in placed.items() if v != here} == {}
