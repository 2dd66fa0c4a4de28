"""``python -m experiments.prorl_tiny run|report|plan [--budget full|smoke] [--out DIR] ...``

- ``run``: every unit of the study (training, evaluation, comparison, Creativity Index), then
  the report. Resumable: rerun the same command after an interruption.
- ``report``: rewrite the report from the results in ``--out``.
- ``plan``: list the units, whether each is done, and the estimated CPU time.

The full budget's report goes to ``docs/`` (``docs/study-prorl-tiny.md`` and its figures), any
other budget's to ``OUT/report/``; ``--report-dir`` chooses another place.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from experiments.prorl_tiny.report import MissingResults, write_report
from experiments.prorl_tiny.runner import Runner, StudyError, check_study_dir, is_done, lock_study_dir
from experiments.prorl_tiny.study import BUDGETS, REPO, default_out, hours, plan, total_cost


def rerun_command(budget: str) -> str:
    """The documented command (its output directory is the default one)."""
    return ".venv/bin/python -m experiments.prorl_tiny run" + ("" if budget == "full" else f" --budget {budget}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.prorl_tiny",
                                description="ProRL's claims on the embedded tiny model: a resumable study.")
    p.add_argument("command", choices=("run", "report", "plan"))
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    p.add_argument("--out", type=Path, default=None, help="study directory (default: the checkout's runs/study, "
                   "runs/study-smoke for the smoke budget)")
    p.add_argument("--report-dir", type=Path, default=None,
                   help="where the report goes (default: docs/ for the full budget, else OUT/report)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="units run at once, one thread each (default %(default)s)")
    p.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    budget = BUDGETS[args.budget]
    out = (args.out or REPO / default_out(budget.name)).resolve()
    report_dir = args.report_dir or (REPO / "docs" if budget.name == "full" else out / "report")
    units = plan(budget)
    try:
        if args.jobs < 1:
            raise StudyError(f"--jobs {args.jobs}: must be >= 1")
        if args.command == "plan":
            for u in units:
                print(f"{'done' if is_done(out, u) else 'todo'}  {u.name:34s} {hours(u.cost):>10s}")
            print(f"total estimate: {hours(total_cost(budget))} of CPU ({len(units)} units + the report)")
            return 0
        if args.command == "run":
            out.mkdir(parents=True, exist_ok=True)
            held = lock_study_dir(out)
            try:
                check_study_dir(out, budget)
                print(f"study {out} (budget {budget.name}, {args.jobs} job(s)); logs in {out / 'logs'}", flush=True)
                rc = Runner(out, units, args.jobs, args.progress_every, say=lambda s: print(s, flush=True)).run()
                if rc:
                    return rc
            finally:
                held.close()
        path = write_report(out, budget, report_dir, rerun_command(budget.name))
        print(f"report: {path}")
        return 0
    except (StudyError, MissingResults) as exc:
        print(f"prorl_tiny: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
