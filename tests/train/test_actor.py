"""PolicyActor semantics on real Megatron-Core (spawned gloo ranks): updates, resets, guards."""

from __future__ import annotations

import pytest
import torch

from helpers.hf_models import QWEN2
from megatron_prorl.runtime.launch import spawn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T = 1.2  # the rollout temperature the log-probs are taken at

# Half the shared tiny Qwen2's width and vocabulary: many spawned ranks, each builds it.
TINY = dict(QWEN2, hidden_size=32, intermediate_size=64, vocab_size=50, max_position_embeddings=64,
            rope_theta=10000.0)


def _actor(tp=1, pp=1, **overrides):
    from megatron_prorl.train.actor import PolicyActor
    from megatron_prorl.config import ProRLConfig
    from megatron_prorl.runtime.distributed import init_distributed
    from checkpoint_convert.arch import hf_arch

    cfg = ProRLConfig()
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    cfg.batch.prompts_per_step, cfg.batch.prompts_per_mini_batch, cfg.batch.micro_batch_size = 4, 2, 4
    cfg.optim.lr = 1e-2
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    init_distributed(cfg.parallel)
    return PolicyActor(cfg, hf_arch(TINY))


def _batch(advantages):
    from megatron_prorl.train.batch import from_sequences

    g = torch.Generator().manual_seed(3)
    n = len(advantages)
    prompts = [torch.randint(0, 50, (5,), generator=g).tolist() for _ in range(n)]
    responses = [torch.randint(0, 50, (6,), generator=g).tolist() for _ in range(n)]
    return from_sequences(prompts, responses, advantages)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _optimizer_state_sizes(actor):
    return [len(opt.optimizer.state) for opt in getattr(actor.optimizer, "chained_optimizers", [actor.optimizer])]


def _update_then_reset(reset_optimizer: bool):
    from megatron_prorl.runtime.distributed import shutdown_distributed

    actor = _actor(reset__reset_optimizer=reset_optimizer)
    batch = _batch([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])
    out = {}
    # The reference starts as a copy of the policy.
    out["equal_at_start"] = all(torch.equal(a, b) for a, b in zip(_params(actor.reference), _params(actor.policy_module)))
    logp0, _ = actor.forward_logprobs(batch, T)
    batch.old_logprobs, batch.ref_logprobs = logp0, logp0
    metrics = actor.update(batch, T, actor.cfg.algo.kl_beta)
    out["updates_after_one_step"] = actor.state.updates  # prompts_per_step / prompts_per_mini_batch
    out["metrics"] = metrics
    for _ in range(4):
        batch.old_logprobs, _ = actor.forward_logprobs(batch, T)
        actor.update(batch, T, actor.cfg.algo.kl_beta)
    logp1, _ = actor.forward_logprobs(batch, T)
    ref_logp, _ = actor.forward_logprobs(batch, T, "reference")
    mask = batch.loss_mask.bool()
    seq_gain = ((logp1 - logp0) * mask).sum(-1)
    out["gain_positive_adv"] = seq_gain[batch.advantages > 0].mean().item()
    out["gain_negative_adv"] = seq_gain[batch.advantages < 0].mean().item()
    out["reference_unchanged"] = torch.equal(ref_logp, logp0)
    out["differs_before_reset"] = not all(torch.equal(a, b) for a, b in zip(_params(actor.reference), _params(actor.policy_module)))
    out["state_before"] = _optimizer_state_sizes(actor)
    optimizer_before = actor.optimizer
    record = actor.reset_reference(step=5, reason="test")
    out["record"] = (record.step, record.reason, record.optimizer_reset)
    out["equal_after_reset"] = all(torch.equal(a, b) for a, b in zip(_params(actor.reference), _params(actor.policy_module)))
    out["ref_logprobs_equal_policy"] = torch.equal(*(actor.forward_logprobs(batch, T, m)[0] for m in ("policy", "reference")))
    out["state_after"] = _optimizer_state_sizes(actor)
    out["same_optimizer_object"] = actor.optimizer is optimizer_before
    # The (possibly fresh) optimizer still trains.
    batch.old_logprobs, _ = actor.forward_logprobs(batch, T)
    before = _params(actor.policy_module)
    actor.update(batch, T, actor.cfg.algo.kl_beta)
    out["moved_after_reset"] = any(not torch.equal(a, b) for a, b in zip(before, _params(actor.policy_module)))
    shutdown_distributed()
    return out


@pytest.mark.parametrize("reset_optimizer", [True, False])
def test_updates_learn_and_reset_copies_policy(reset_optimizer):
    out = spawn(_update_then_reset, 1, reset_optimizer)[0]
    assert out["equal_at_start"]
    assert out["updates_after_one_step"] == 2
    assert out["metrics"]["update_skipped"] == 0 and out["metrics"]["grad_norm"] > 0
    # Positive advantages raise their responses' log-probs, negative ones lower them.
    assert out["gain_positive_adv"] > 0 > out["gain_negative_adv"]
    assert out["reference_unchanged"] and out["differs_before_reset"]
    assert out["equal_after_reset"] and out["ref_logprobs_equal_policy"]
    assert out["record"] == (5, "test", reset_optimizer)
    assert all(n > 0 for n in out["state_before"])
    if reset_optimizer:
        assert all(n == 0 for n in out["state_after"]) and not out["same_optimizer_object"]
    else:
        assert out["state_after"] == out["state_before"] and out["same_optimizer_object"]
    assert out["moved_after_reset"]


def _nonfinite_guard():
    from megatron_prorl.train.actor import NonFiniteError
    from megatron_prorl.runtime.distributed import shutdown_distributed

    actor = _actor(optim__max_consecutive_nonfinite=2)
    good = _batch([1.0, -1.0, 1.0, -1.0])
    bad = _batch([float("nan"), -1.0, 1.0, -1.0])
    for b in (good, bad):
        b.old_logprobs, _ = actor.forward_logprobs(b, T)
        b.ref_logprobs = b.old_logprobs
    before = _params(actor.policy_module)
    actor.cfg.batch.prompts_per_step = actor.cfg.batch.prompts_per_mini_batch  # one update per call
    skipped = actor.update(bad, T, actor.cfg.algo.kl_beta)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, _params(actor.policy_module)))
    recovered = actor.update(good, T, actor.cfg.algo.kl_beta)  # a good update resets the count
    counts = (actor.state.skipped_updates, actor.state.consecutive_nonfinite)
    actor.update(bad, T, actor.cfg.algo.kl_beta)
    try:
        actor.update(bad, T, actor.cfg.algo.kl_beta)
        raised = ""
    except NonFiniteError as exc:
        raised = str(exc)
    shutdown_distributed()
    return skipped, unchanged, recovered, counts, raised


def test_nonfinite_updates_are_skipped_then_abort():
    skipped, unchanged, recovered, counts, raised = spawn(_nonfinite_guard, 1)[0]
    assert skipped["update_skipped"] == 1 and unchanged
    assert recovered["update_skipped"] == 0
    assert counts == (1, 0)
    assert "2 consecutive updates had a non-finite loss or gradient" in raised
    assert "optim.max_consecutive_nonfinite=2" in raised


class _NoReads:
    """Stands in for cfg.algo once the actor is built: any read of a setting fails."""

    def __getattr__(self, name):
        raise AssertionError(f"cfg.algo.{name} read after the actor was built")


def _loss_settings_bound_at_construction():
    from megatron_prorl.algo import PolicyObjective
    from megatron_prorl.runtime.distributed import shutdown_distributed

    actor = _actor(algo__kl_estimator="k2", algo__entropy_coef=0.01)
    built_from_config = actor.objective == PolicyObjective.from_config(actor.cfg.algo)
    batch = _batch([1.0, -1.0, 0.5, -0.5])
    batch.old_logprobs, _ = actor.forward_logprobs(batch, T)
    batch.ref_logprobs = batch.old_logprobs - 0.5  # a reference away from the policy: KL > 0
    actor.cfg.algo = _NoReads()
    metrics = [actor.forward_backward(batch, T, kl_beta) for kl_beta in (0.0, 0.5)]
    shutdown_distributed()
    return built_from_config, metrics


def test_the_loss_is_built_once_and_takes_kl_beta_per_call():
    """forward_backward reads no cfg.algo setting (they are bound in actor.objective); the
    stage's kl_beta, given per call, adds exactly kl_beta * KL to the loss."""
    built_from_config, (m0, m1) = spawn(_loss_settings_bound_at_construction, 1)[0]
    assert built_from_config
    assert m1["kl"] == pytest.approx(0.5 ** 2 / 2) and m0["kl"] == m1["kl"]  # k2 of a log-ratio of 0.5
    assert m0["pg_loss"] == m1["pg_loss"] and m0["entropy"] == m1["entropy"] > 0
    assert m1["loss"] - m0["loss"] == pytest.approx(0.5 * m1["kl"], rel=1e-6)


def _fp16_overflow():
    from helpers.devsim import simulated_cuda

    from megatron_prorl.runtime import device
    from megatron_prorl.runtime.distributed import shutdown_distributed

    # Megatron's fp16 optimizer takes CUDA tensors only: the simulated device (tests/helpers/
    # devsim.py) runs it, computing in fp16 on the CPU. Its loss scale starts at 2**32.
    with simulated_cuda():
        actor = _actor(model__dtype="fp16")
        batch = device.to_current(_batch([1.0, -1.0, 1.0, -1.0]))
        batch.old_logprobs, _ = actor.forward_logprobs(batch, T)
        batch.ref_logprobs = batch.old_logprobs
        actor.cfg.batch.prompts_per_step = actor.cfg.batch.prompts_per_mini_batch  # one update per call
        scales, skipped = [float(actor.optimizer.get_loss_scale())], []
        for _ in range(40):
            skipped.append(actor.update(batch, T, actor.cfg.algo.kl_beta)["update_skipped"])
            scales.append(float(actor.optimizer.get_loss_scale()))
            if not skipped[-1]:
                break
        shutdown_distributed()
    return scales, skipped, actor.state.updates


def test_fp16_overflow_backs_the_loss_scale_off_until_an_update_goes_through():
    """Real fp16 training (Megatron's Float16 optimizer and dynamic grad scaler, on CPU): the
    first updates overflow at the initial loss scale; each is skipped and the scale halves,
    until one goes through (it once crashed on float(None), or never let the scaler back off)."""
    scales, skipped, updates = spawn(_fp16_overflow, 1)[0]
    assert skipped[0] == 1 and skipped[-1] == 0 and updates == 1, (scales, skipped)
    assert scales[-1] < scales[0] and all(b <= a for a, b in zip(scales, scales[1:]))


def _reset_under_tp_pp():
    from megatron_prorl.runtime.distributed import shutdown_distributed

    actor = _actor(tp=2, pp=2)
    batch = _batch([1.0, -1.0, 1.0, -1.0])
    batch.old_logprobs, _ = actor.forward_logprobs(batch, T)
    batch.ref_logprobs = batch.old_logprobs
    actor.update(batch, T, actor.cfg.algo.kl_beta)
    actor.reset_reference(step=1, reason="tp2pp2")
    equal = all(torch.equal(a, b) for a, b in zip(_params(actor.reference), _params(actor.policy_module)))
    shutdown_distributed()
    return equal


def test_reset_is_exact_on_every_shard_under_tp2_pp2():
    assert all(spawn(_reset_under_tp_pp, 4))
