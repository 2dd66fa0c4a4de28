"""``prorl eval``: the paper's evaluation (pass@1 over 16 samples, pass@k to 128, majority@k),
the reasoning-boundary regimes between checkpoints, and the Creativity Index.

Modules: :mod:`.metrics` (pass@k, majority@k), :mod:`.regimes` (the regime rule),
:mod:`.sources` (SOURCE arguments), :mod:`.model` (MODEL arguments, checkpoint conversion),
:mod:`.run` (sampling, scoring, samples.jsonl and resume), :mod:`.report` (results.json,
summary.md, plots), :mod:`.compare` (``prorl eval compare``), :mod:`.creativity` (the corpus
index and the Creativity Index), :mod:`.cli` (the command line).
"""

from megatron_prorl.eval.metrics import majority_at_k, pass_at_k
from megatron_prorl.eval.regimes import classify

__all__ = ["classify", "majority_at_k", "pass_at_k"]
