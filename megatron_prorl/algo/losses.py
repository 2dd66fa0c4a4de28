"""Policy-gradient loss, loss aggregation, and the total ProRL objective.

Token tensors are ``[B, T]`` with a mask ``[B, T]`` (1 = response token). Everything under a
zero of the mask is ignored in values and gradients, whatever it holds.

Exact aggregation across micro-batches and data-parallel ranks: pass ``num_tokens`` /
``num_seqs``, the mini-batch's global counts (from :func:`normalisers`, summed over its
micro-batches and all-reduced over ranks). Each micro-batch's loss is then its share of the
mini-batch value, and the shares SUM to exactly the full-batch loss. The same holds for every
metric except those in ``MAX_METRICS``, which reduce with max. Without the counts, each value is
the local (micro-batch) one.

A policy loss is registered per token: ``fn(log_ratio, advantages, mask, *, eps_low, eps_high,
**kwargs) -> (loss_tok [B, T], indicators)`` where ``log_ratio = logp - old_logp`` (finite, 0
off-mask), ``advantages`` is ``[B, T]`` and ``indicators`` maps metric names to ``[B, T]``
bool/float tensors that :func:`policy_loss` averages over response tokens. Extra keyword
arguments of :func:`policy_loss` / :func:`total_loss` reach the loss as they are; the training
objective (:mod:`megatron_prorl.algo.objective`) passes ``clip_ratio_c`` (``algo.clip_ratio_c``),
so a loss that has no use for it takes ``**_``.
Masking, truncated importance sampling and aggregation are done once, here, for every
registered loss.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from megatron_prorl.algo.advantages import broadcast_advantages
from megatron_prorl.algo.kl import KL_CLAMP, KLFn, kl_penalty
from megatron_prorl.algo.utils import LOG_RATIO_CLAMP, check_mask, check_shape, masked_sum
from megatron_prorl.registry import Registry

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
MAX_METRICS = frozenset({"ratio_max"})

Count = Union[int, float, Tensor]
PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register
get_policy_loss = POLICY_LOSSES.get


def normalisers(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(response-token count, count of sequences with >= 1 response token) of a ``[B, T]`` mask:
    sum these over micro-batches and ranks to get ``num_tokens`` and ``num_seqs``."""
    lengths = mask.bool().sum(-1)
    return lengths.sum(), (lengths > 0).sum()


def _denominator(given: Optional[Count], local: Tensor, like: Tensor, what: str) -> Tensor:
    if given is None:
        return local.clamp(min=1).to(like.dtype)  # nothing to average: 0, not NaN
    if not isinstance(given, Tensor) and given <= 0:
        raise ValueError(f"{what}={given}: must be > 0")
    return torch.as_tensor(given, dtype=like.dtype, device=like.device)


def aggregate(loss_tok: Tensor, mask: Tensor, agg: str = "token-mean",
              num_tokens: Optional[Count] = None, num_seqs: Optional[Count] = None) -> Tensor:
    """Reduce ``[B, T]`` per-token values to a scalar.

    - ``token-mean``: sum over response tokens / token count (DAPO; long responses weigh more).
    - ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (GRPO paper).
    - ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.

    Sequences without response tokens count in neither mean. ``num_tokens`` / ``num_seqs``
    replace the local counts as denominators (see the module docstring).
    """
    m = check_mask(mask, loss_tok)
    if agg == "token-mean":
        return masked_sum(loss_tok, m) / _denominator(num_tokens, m.sum(), loss_tok, "num_tokens")
    if agg not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {agg!r}; known: {', '.join(AGG_MODES)}")
    lengths = m.sum(-1)
    per_seq = masked_sum(loss_tok, m, -1)
    if agg == "seq-mean-token-mean":
        per_seq = per_seq / lengths.clamp(min=1).to(per_seq.dtype)
    return per_seq.sum() / _denominator(num_seqs, (lengths > 0).sum(), loss_tok, "num_seqs")


def tis_weights(trainer_logprobs: Tensor, engine_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance weights ``min(pi_trainer / pi_engine, cap)`` (detached), correcting
    for the rollout engine's probabilities differing from the trainer's."""
    if cap <= 0:
        raise ValueError(f"tis cap={cap}: must be > 0")
    return torch.exp(trainer_logprobs.detach() - engine_logprobs.detach()).clamp(max=cap)


@register_policy_loss("decoupled_clip")
def decoupled_clip(log_ratio: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float, eps_high: float,
                   clip_ratio_c: Optional[float] = 3.0) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO surrogate with DAPO's clip-higher (ratio clipped to ``[1 - eps_low, 1 + eps_high]``) and
    dual-clip (Ye et al. 2020, arXiv 1912.09729) as verl applies it by default: for a negative
    advantage the per-token loss is capped at ``clip_ratio_c * |A|`` (a constant there, so no
    gradient), which bounds what one token with a huge ratio can contribute; None: no cap.

    Written from verl's ``compute_policy_loss`` (verl/trainer/ppo/core_algos.py at commit 26b5d6b,
    the mid-2025 v0.4.x line; ``clip_ratio_c=3.0``, which must be > 1). ``clip_frac_dual`` is the
    fraction of tokens capped, verl's ``pg_clipfrac_lower``.
    """
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(-advantages * ratio, -advantages * clipped)
    if clip_ratio_c is None:
        capped = torch.zeros_like(log_ratio, dtype=torch.bool)
    else:
        if clip_ratio_c <= 1:
            raise ValueError(f"clip_ratio_c={clip_ratio_c}: must be > 1 (or None for no dual-clip)")
        cap = -advantages * clip_ratio_c
        capped = (advantages < 0) & (loss > cap)
        loss = torch.where(capped, cap, loss)
    return loss, {
        "clip_frac_low": (advantages < 0) & (ratio < 1 - eps_low),
        "clip_frac_high": (advantages > 0) & (ratio > 1 + eps_high),
        "clip_frac_dual": capped,
    }


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                eps_low: float = 0.2, eps_high: float = 0.4, agg: str = "token-mean",
                tis_weights: Optional[Tensor] = None, *, num_tokens: Optional[Count] = None,
                num_seqs: Optional[Count] = None, kind: Union[str, PolicyLossFn] = "decoupled_clip",
                **loss_kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Aggregated policy loss of ``kind`` (a registered name, or the loss itself) and its metrics
    (0-d, detached).

    ``advantages``: per response ``[B]`` or per token ``[B, T]``. ``tis_weights`` ``[B, T]``
    multiply the per-token loss. ``loss_kwargs`` go to the loss (``decoupled_clip``:
    ``clip_ratio_c``). Metrics: the loss's indicators (for ``decoupled_clip``: ``clip_frac_low``,
    ``clip_frac_high``, ``clip_frac_dual``) and ``ratio_mean`` as fractions of response tokens,
    and ``ratio_max``.
    """
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and old_logprobs {tuple(old_logprobs.shape)}: "
                         "expected the same [B, T] shape")
    m = check_mask(mask, logprobs)
    if advantages.dim() == 1:
        advantages = broadcast_advantages(advantages, m)
    check_shape(advantages, logprobs, "advantages")
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), 0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    loss_fn = get_policy_loss(kind) if isinstance(kind, str) else kind
    loss_tok, indicators = loss_fn(
        log_ratio, advantages.detach(), m, eps_low=eps_low, eps_high=eps_high, **loss_kwargs)
    if tis_weights is not None:
        check_shape(tis_weights, logprobs, "tis_weights")
        loss_tok = loss_tok * tis_weights.detach()
    loss = aggregate(loss_tok, m, agg, num_tokens, num_seqs)

    def token_mean(x: Tensor) -> Tensor:
        return aggregate(x.detach().to(loss.dtype), m, "token-mean", num_tokens)

    ratio = log_ratio.detach().exp()
    metrics = {name: token_mean(value) for name, value in indicators.items()}
    metrics["ratio_mean"] = token_mean(ratio)
    metrics["ratio_max"] = torch.where(m, ratio, 0).amax()  # ratios are > 0: 0 is max's identity
    return loss, metrics


def total_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
               ref_logprobs: Optional[Tensor] = None, entropy: Optional[Tensor] = None,
               kl_beta: float = 0.0, kl_estimator: Union[str, KLFn] = "k3", kl_clamp: Optional[float] = KL_CLAMP,
               entropy_coef: float = 0.0, policy_loss_kind: Union[str, PolicyLossFn] = "decoupled_clip",
               eps_low: float = 0.2, eps_high: float = 0.4, agg: str = "token-mean",
               tis_weights: Optional[Tensor] = None, num_tokens: Optional[Count] = None,
               num_seqs: Optional[Count] = None, **loss_kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``pg_loss + kl_beta * KL(pi || pi_ref) - entropy_coef * entropy``, each aggregated with ``agg``.

    ``entropy`` is the per-token policy entropy ``[B, T]`` (computed model-side). ``kl`` and
    ``entropy`` are reported whenever given, even when their coefficient is 0 (monitoring).
    ``kl_estimator`` and ``policy_loss_kind`` are registered names or the functions themselves
    (:class:`~megatron_prorl.algo.objective.PolicyObjective` passes functions it resolved once).
    ``loss_kwargs`` go to the policy loss (see :func:`policy_loss`). Returns the loss and a flat
    dict of 0-d detached metrics: ``loss``, ``pg_loss``, the policy loss's metrics, and ``kl`` /
    ``entropy`` when available.
    """
    if kl_beta != 0 and ref_logprobs is None:
        raise ValueError(f"kl_beta={kl_beta} needs ref_logprobs")
    if entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs the per-token entropy")
    m = check_mask(mask, logprobs)
    pg, metrics = policy_loss(logprobs, old_logprobs, advantages, m, eps_low, eps_high, agg, tis_weights,
                              num_tokens=num_tokens, num_seqs=num_seqs, kind=policy_loss_kind, **loss_kwargs)
    loss = pg
    metrics["pg_loss"] = pg.detach()
    if ref_logprobs is not None:
        # Zero both off-mask: garbage there could overflow exp, and a zero gradient times an
        # infinite or NaN derivative is NaN.
        kl_tok = kl_penalty(torch.where(m, logprobs, 0), torch.where(m, ref_logprobs, 0), kl_estimator, kl_clamp)
        kl = aggregate(kl_tok, m, agg, num_tokens, num_seqs)
        metrics["kl"] = kl.detach()
        if kl_beta != 0:
            loss = loss + kl_beta * kl
    if entropy is not None:
        ent = aggregate(entropy, m, agg, num_tokens, num_seqs)
        metrics["entropy"] = ent.detach()
        if entropy_coef != 0:
            loss = loss - entropy_coef * ent
    metrics["loss"] = loss.detach()
    return loss, metrics
