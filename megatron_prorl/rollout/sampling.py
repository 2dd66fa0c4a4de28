"""Next-token sampling with exact log-probabilities (pure tensor functions).

The recorded log-prob of a sampled token is ``log_softmax(logits / T)`` at that token: the
temperature-scaled distribution over the full vocabulary. That is what the trainer recomputes
(one forward over prompt + response, ``log_softmax(logits / T)``), so the engine/trainer
log-prob mismatch measures numerics only. With ``top_p < 1`` the token is drawn from the
nucleus-truncated, renormalised distribution, but the recorded value stays the un-truncated
one (the policy the trainer optimises); ProRL samples with ``top_p = 1`` where the two agree.
"""

from __future__ import annotations

import torch


def temperature_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(logits / T)`` in float32 over the last dimension."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def top_p_keep_mask(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """True for tokens inside the nucleus: the smallest most-probable set whose mass reaches
    ``top_p`` (the most probable token is always kept)."""
    sorted_lp, order = logprobs.sort(dim=-1, descending=True)
    probs = sorted_lp.exp()
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= top_p
    return ~torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)


def prompt_uniforms(seed: int, n: int, length: int) -> torch.Tensor:
    """The uniform draws of one prompt's ``n`` samples, ``[n, length]``: position t of sample s
    uses ``[s, t]``. One CPU generator per prompt, seeded alone, so a prompt's samples do not
    depend on which other prompts share its batch (or on the device)."""
    return torch.rand((n, length), generator=torch.Generator().manual_seed(seed))


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` [B, V]; return (tokens [B], logprobs [B]).

    Inverse-CDF sampling with row i's draw ``uniforms[i]`` in [0, 1) (reproducible), scaled by
    the row's total mass so a float32 cumulative sum that ends slightly off 1 stays unbiased."""
    logprobs = temperature_logprobs(logits, temperature)
    probs = logprobs.exp()
    if top_p < 1.0:
        probs.masked_fill_(~top_p_keep_mask(logprobs, top_p), 0.0)
    cdf = probs.cumsum_(dim=-1)
    total = cdf[:, -1:]
    u = uniforms.to(device=cdf.device, dtype=cdf.dtype)[:, None] * total
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    # u rounding up to the total would step past the last token with mass (or past the end).
    last_with_mass = (cdf < total).sum(dim=-1)
    tokens = torch.minimum(tokens, last_with_mass)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
