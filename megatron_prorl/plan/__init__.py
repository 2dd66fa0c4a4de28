"""`prorl plan`: does a config fit the GPUs, phase by phase (memory.py: the formulas; inputs.py:
config -> inputs; report.py: tables, verdicts, what would make it fit)."""
