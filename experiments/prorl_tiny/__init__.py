"""ProRL's four claims (arXiv 2505.24864) tested on the embedded tiny model, end to end through
the project's public commands only: prolonged training with the full recipe (several seeds) and
its ablations, pass@k to 256 on held-out, harder and never-trained tasks, the regimes over
checkpoints, and the Creativity Index against the tiny model's own pretraining corpus.

    python -m experiments.prorl_tiny run            # the study (resumable), then docs/study-prorl-tiny.md
    python -m experiments.prorl_tiny run --budget smoke   # the same in minutes (CI)
"""
