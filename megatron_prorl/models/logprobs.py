"""Per-token log-probs and entropy on vocab-parallel logits.

Each TP rank holds logits for its slice of the (padded) vocabulary. The log-softmax needs only
three scalars per token from the whole TP group (max, sum of exp, sum of p*logit), so the full
vocabulary is never gathered.

Two implementations of the same math:

- :func:`vocab_parallel_logprobs`, plain autograd over the whole ``[tokens, vocab / TP]`` block
  (the reference). Its all-reduces are autograd-aware (sum forward, identity backward), which is
  exact because every TP rank computes the same loss from the reduced values. Autograd keeps
  several fp32 copies of the block alive: the scaled logits, their exp, the probabilities.
- :func:`chunked_logprobs` (``model.logprob_chunk_tokens``), an autograd Function that walks the
  tokens in chunks: the forward keeps three numbers per token (max, log-partition, entropy) and
  no fp32 block; the backward recomputes each chunk's probabilities and writes its gradient
  (``d logp / dz = onehot - p``, ``d H / dz = -p (log p + H)``, over ``z = logits / T``) into the
  logits' gradient. At most one chunk of fp32 temporaries is alive, forward or backward, and the
  backward needs no collective (each rank owns its columns' gradient given the saved global
  statistics).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def _tp_sum(x: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():  # one process, no tensor parallelism (benchmarks, unit tests)
        return x
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(x)


def _tp_all_reduce_(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In place over the TP group (no autograd: the chunked path differentiates by hand)."""
    if dist.is_initialized() and dist.get_world_size(_tp_group()) > 1:
        dist.all_reduce(x, op=op, group=_tp_group())
    return x


def _padding(logits: torch.Tensor, vocab_start: int, true_vocab_size: int) -> torch.Tensor:
    """This rank's columns at or beyond the true vocabulary (TP padding), [V_local] bool."""
    return torch.arange(vocab_start, vocab_start + logits.shape[-1], device=logits.device) >= true_vocab_size


def _scaled(logits: torch.Tensor, padding: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 ``logits / T`` with the padding columns at -inf."""
    return (logits.float() / temperature).masked_fill(padding, float("-inf"))


def _picked(shifted: torch.Tensor, targets: torch.Tensor, vocab_start: int) -> torch.Tensor:
    """This rank's share of the shifted logit at each target (0 where another rank owns it)."""
    v_local = shifted.shape[-1]
    local = targets - vocab_start
    in_range = (local >= 0) & (local < v_local)
    picked = shifted.gather(-1, local.clamp(0, v_local - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(in_range, picked, torch.zeros_like(picked))


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    true_vocab_size: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log p(target) and (optionally) the entropy of softmax(logits / T), per position.

    logits: [..., V_local], this rank's vocabulary columns [vocab_start, vocab_start + V_local).
    targets: [...] global token ids. Columns at or beyond ``true_vocab_size`` (TP padding) are
    excluded from the distribution.
    """
    padding = _padding(logits, vocab_start, true_vocab_size)
    logits = _scaled(logits, padding, temperature)
    # The max is a constant shift for stability: no gradient needed through it.
    lmax = _tp_all_reduce_(logits.detach().max(dim=-1).values, dist.ReduceOp.MAX)
    shifted = logits - lmax.unsqueeze(-1)
    log_z = _tp_sum(shifted.exp().sum(dim=-1)).log()
    logprobs = _tp_sum(_picked(shifted, targets, vocab_start)) - log_z

    entropy = None
    if with_entropy:
        probs = (shifted - log_z.unsqueeze(-1)).exp()
        # Padded columns have p = 0 and logit -inf; zero the logit so 0 * -inf yields no NaN
        # (in the forward or the gradient).
        p_logit = (probs * shifted.masked_fill(padding, 0.0)).sum(dim=-1)
        entropy = log_z - _tp_sum(p_logit)
    return logprobs, entropy


class _ChunkedLogprobs(torch.autograd.Function):
    """log p(target) and entropy over ``[n, V_local]`` logits, ``chunk`` rows at a time."""

    @staticmethod
    def forward(ctx, logits, targets, vocab_start, true_vocab_size, temperature, chunk):
        n = logits.shape[0]
        stats = torch.empty((4, n), dtype=torch.float32, device=logits.device)  # max, log Z, logp, H
        padding = _padding(logits, vocab_start, true_vocab_size)
        for c0 in range(0, n, chunk):
            z = _scaled(logits[c0:c0 + chunk], padding, temperature)
            lmax = _tp_all_reduce_(z.max(dim=-1).values, dist.ReduceOp.MAX)
            shifted = z - lmax.unsqueeze(-1)
            del z
            e = shifted.exp()
            # One SUM over TP for the three sums: Z, the target's shifted logit, sum of e * shifted.
            sums = torch.stack([e.sum(-1), _picked(shifted, targets[c0:c0 + chunk], vocab_start),
                                (e * shifted.masked_fill(padding, 0.0)).sum(-1)])
            del e, shifted
            z_sum, picked, e_shifted = _tp_all_reduce_(sums)
            log_z = z_sum.log()
            stats[:, c0:c0 + chunk] = torch.stack([lmax, log_z, picked - log_z, log_z - e_shifted / z_sum])
        ctx.save_for_backward(logits, targets, padding, stats[0], stats[1], stats[3])
        ctx.args = (vocab_start, temperature, chunk)
        ctx.set_materialize_grads(False)
        return stats[2].clone(), stats[3].clone()

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, targets, padding, lmax, log_z, entropy = ctx.saved_tensors
        vocab_start, temperature, chunk = ctx.args
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        grad = torch.empty_like(logits)  # every row is written below
        v_local = logits.shape[-1]
        for c0 in range(0, logits.shape[0], chunk):
            rows = slice(c0, c0 + chunk)
            z = _scaled(logits[rows], padding, temperature)
            shifted = (z - lmax[rows].unsqueeze(-1)).masked_fill_(padding, 0.0)  # padding: p = 0 below
            del z
            log_p = shifted - log_z[rows].unsqueeze(-1)
            p = log_p.exp().masked_fill_(padding, 0.0)
            g = torch.zeros_like(p)
            if grad_entropy is not None:
                g = -(p * (log_p + entropy[rows].unsqueeze(-1))) * grad_entropy[rows].unsqueeze(-1)
            del shifted, log_p
            if grad_logp is not None:
                g_lp = grad_logp[rows]
                g -= p * g_lp.unsqueeze(-1)
                local = targets[rows] - vocab_start
                in_range = (local >= 0) & (local < v_local)
                g.scatter_add_(-1, local.clamp(0, v_local - 1).unsqueeze(-1),
                               torch.where(in_range, g_lp, torch.zeros_like(g_lp)).unsqueeze(-1))
            grad[rows] = g / temperature
        return grad, None, None, None, None, None


def chunked_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    true_vocab_size: int,
    temperature: float,
    chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`vocab_parallel_logprobs` (with entropy) over ``chunk_tokens`` tokens at a time,
    recomputed in backward: logits ``[..., V_local]``, targets ``[...]``."""
    v_local = logits.shape[-1]
    logprobs, entropy = _ChunkedLogprobs.apply(logits.reshape(-1, v_local), targets.reshape(-1), vocab_start,
                                               true_vocab_size, temperature, chunk_tokens)
    return logprobs.view(targets.shape), entropy.view(targets.shape)


def token_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    vocab_start: int,
    true_vocab_size: int,
    temperature: float,
    chunk_tokens: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and entropy of each next token: ``[b, s-1]`` from the model's ``[b, s, V_local]``
    logits of ``input_ids [b, s]`` (position t scores token t + 1). ``chunk_tokens``: see
    :func:`chunked_logprobs` (None: :func:`vocab_parallel_logprobs` over the whole block)."""
    if chunk_tokens is None:
        return vocab_parallel_logprobs(logits[:, :-1], input_ids[:, 1:], vocab_start, true_vocab_size, temperature,
                                       with_entropy=True)
    # The whole logits go in (a slice would cost a full-size zero gradient in its backward); the
    # last position's target is a dummy and its outputs are dropped.
    logprobs, entropy = chunked_logprobs(logits, input_ids.roll(-1, dims=1), vocab_start, true_vocab_size,
                                         temperature, chunk_tokens)
    return logprobs[:, :-1], entropy[:, :-1]
