"""Task domains: everything the system knows about one kind of problem, in one record.

A :class:`Domain` says how a response is scored (its verifier), what the prompt asks for (the
instruction after each problem), what a row's ground truth must look like, where
``prorl data prepare`` takes its training file from, how a reward worker warms it up, and how
``prorl eval`` reports it. Data rows, configs, the data preparation, the reward pool and the
evaluation reports all read the domains from :data:`DOMAINS`, so a new domain is one call:

    from megatron_prorl.domains import Domain, register_domain
    register_domain(Domain("toy", verify=verify_toy, instruction="Answer in reverse."))

The five built-in domains (math, code, stem, logic, ifeval) each live in a module of this
package (the verifier, the record and what only that domain needs), imported on first use. This
module itself imports nothing but the registry type: every other part may depend on it.

A domain registered at run time reaches the reward pool's worker processes (its functions must
then be module-level, so that they pickle). Commands started as separate processes (``prorl
train``'s ranks, ``prorl eval``, ``prorl data prepare``) learn of it through a plugin module
(:mod:`megatron_prorl.plugins`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from megatron_prorl.registry import Registry

# (answer text after the reasoning, ground truth, RewardsConfig) -> RewardResult
Verifier = Callable[[str, Any, Any], Any]


def ground_truth_present(gt: Any) -> None:
    """The least a ground truth must be: there."""
    if gt is None:
        raise ValueError("ground_truth is missing")


@dataclass(frozen=True)
class PrepareSource:
    """Where ``prorl data prepare`` takes a domain's training file (``DOMAIN.jsonl``) from.

    ``source``: what is read by default (a hub dataset ``hf:NAME[?name=CONFIG&split=SPLIT]``), or
    None when the user must name a file (``--source DOMAIN=PATH``); ``format``: the converter of
    its rows (:data:`megatron_prorl.data.FORMATS`). ``generate``: instead of a source,
    ``"module:function"`` making the rows as ``function(split, size, seed)`` (Reasoning Gym)."""

    source: Optional[str] = None
    format: str = "prorl"
    generate: Optional[str] = None


@dataclass(frozen=True)
class Domain:
    name: str
    verify: Verifier
    # Said after each problem in the user turn; part of the recipe (the policy is trained on it).
    instruction: str = ""
    # A problem of the domain, to show the prompt format (an exported model's card).
    example: str = ""
    # Raises ValueError (the message says what is wrong) for a malformed ground truth.
    check_ground_truth: Callable[[Any], None] = ground_truth_present
    prepare: PrepareSource = PrepareSource()
    # Called once per reward worker before work (imports, caches); may return a description
    # of what it set up (the code domain's sandbox), which the pool reports.
    warm: Optional[Callable[[Any], Optional[dict]]] = None
    # Evaluation reports: table title, position among the domains, and the headline number
    # ("pass@1", or "mean reward" for continuous rewards: the paper's choice per domain).
    title: str = ""
    order: int = 100
    headline: str = "pass@1"
    # Verifiers report the extracted answer (details["answer"]): majority@k is meaningful.
    answers: bool = False
    # The ground truth is a JSON structure (test cases, a generator entry, constraints), which
    # columnar files store as a JSON string; otherwise it is an answer string.
    structured_ground_truth: bool = False

    def __post_init__(self) -> None:
        if self.headline not in HEADLINES:
            raise ValueError(f"domain {self.name!r}: headline={self.headline!r}: expected one of {HEADLINES}")
        if not self.title:
            object.__setattr__(self, "title", self.name)


HEADLINES = ("pass@1", "mean reward")

DOMAINS: Registry[Domain] = Registry("task domain", {
    name: f"megatron_prorl.domains.{name}:DOMAIN" for name in ("math", "code", "stem", "logic", "ifeval")})


def register_domain(domain: Domain, *, replace: bool = False) -> Domain:
    """Add ``domain`` (``replace=True`` to replace one of the same name)."""
    return DOMAINS.register(domain.name, domain, replace=replace)


def get(name: str) -> Domain:
    return DOMAINS.get(name)


def names() -> tuple[str, ...]:
    return DOMAINS.names()


def in_report_order(domains) -> list[str]:
    """``domains`` (names) in evaluation-report order; unknown names last, by name."""
    def key(name):
        return (DOMAINS.get(name).order, name) if name in DOMAINS else (float("inf"), name)
    return sorted(domains, key=key)
