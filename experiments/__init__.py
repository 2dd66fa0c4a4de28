"""Studies built only on the project's public commands (``prorl train``, ``prorl eval``): not part
of the installed package; run them from the repository root (``python -m experiments.NAME``)."""
