"""A user's own task domain, as a plugin module: importing it registers the domain, with one
call (``PRORL_PLUGINS=helpers.toy_plugin`` brings it into every process of a command).

"parity": the problems are the tiny model's additions, and an answer earns its reward when its
parity is the sum's, so the tiny model, which gets some sums right and some wrong, sees groups of
mixed rewards."""

from __future__ import annotations

from megatron_prorl.domains import Domain, register_domain
from megatron_prorl.domains.result import RewardResult, format_failure
from megatron_prorl.domains.text import boxed_answers


def verify_parity(answer: str, ground_truth, cfg) -> RewardResult:
    boxed = boxed_answers(answer)
    if not boxed or not boxed[-1].strip().lstrip("-").isdigit():
        return format_failure("no integer in \\boxed{}")
    return RewardResult(float(int(boxed[-1]) % 2 == int(ground_truth) % 2), details={"answer": boxed[-1]})


def check_parity_truth(ground_truth) -> None:
    if not isinstance(ground_truth, str) or not ground_truth.lstrip("-").isdigit():
        raise ValueError(f"parity ground_truth must be an integer string, got {ground_truth!r}")


PARITY = register_domain(Domain(
    "parity", verify=verify_parity, check_ground_truth=check_parity_truth,
    instruction="Let's think step by step and output the final answer within \\boxed{}.",
    title="Parity of sums", order=10, headline="pass@1", answers=True))
