"""``prorl eval compare``: several evaluations (checkpoints in training order, or base then
trained) side by side, with each benchmark classified into the paper's regimes
(:mod:`megatron_prorl.eval.regimes`). Writes ``compare.md`` (the rule, the Tables 1-3 layout
with one row per evaluation, the per-benchmark change table), ``compare.json`` and
``compare.png`` (per benchmark: pass@k curves of every evaluation, and pass@1 / pass@K over
the evaluations).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from megatron_prorl.eval.regimes import DEFAULT_MIN_CHANGE, classify, rule_text
from megatron_prorl.eval.report import benchmarks, draw_pass_at_k, load_results, short, summary_tables
from megatron_prorl.runtime.run_lock import make_output_dir

COMPARE_MD, COMPARE_JSON, COMPARE_PNG = "compare.md", "compare.json", "compare.png"


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    labels, seen = [], {}
    for d in run_dirs:
        name = Path(d).resolve().name
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


def compare(run_dirs: Sequence[str | Path], out_dir: str | Path, k: Optional[int] = None,
            min_change: float = DEFAULT_MIN_CHANGE) -> dict:
    if len(run_dirs) < 2:
        raise ValueError(f"eval compare needs at least two results directories, got {len(run_dirs)}")
    runs = list(zip(run_labels(run_dirs), [load_results(d) for d in run_dirs]))
    tables = [dict(benchmarks(results)) for _, results in runs]
    common = [name for name in tables[0] if all(name in t for t in tables[1:])]
    if not common:
        raise ValueError("the evaluations share no benchmark: nothing to compare")
    rows = {}
    for name in common:
        ks = set.intersection(*(set(map(int, t[name]["pass@k"])) for t in tables))
        big = k if k is not None else max(ks)
        if big not in ks:
            raise ValueError(f"--k {big}: not evaluated for {name} in every run (common ks: {sorted(ks)})")
        pass1 = [t[name]["pass@k"]["1"] for t in tables]
        passk = [t[name]["pass@k"][str(big)] for t in tables]
        regime = classify(pass1, passk, min_change)
        rows[name] = {"k": big, "pass@1": pass1, "pass@k": passk, "regime": regime.name, "why": regime.why}
    result = {"runs": [label for label, _ in runs], "dirs": [str(d) for d in run_dirs], "min_change": min_change,
              "rule": rule_text(min_change), "benchmarks": rows}
    out = make_output_dir(out_dir, "--out")
    (out / COMPARE_JSON).write_text(json.dumps(result, indent=1) + "\n")
    (out / COMPARE_MD).write_text(_markdown(result, runs))
    _plot(runs, rows, out / COMPARE_PNG)
    return result


def change_table(result: dict) -> str:
    first, last = result["runs"][0], result["runs"][-1]
    lines = [f"| benchmark | pass@1 {first} -> {last} | pass@K {first} -> {last} | K | regime |",
             "|---|---|---|---|---|"]
    for name, row in result["benchmarks"].items():
        cells = []
        for key in ("pass@1", "pass@k"):
            a, b = row[key][0], row[key][-1]
            cells.append(f"{100 * a:.2f} -> {100 * b:.2f} ({100 * (b - a):+.2f})")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {row['k']} | {row['regime']} |")
    return "\n".join(lines) + "\n"


def _markdown(result: dict, runs) -> str:
    return ("# Comparison: " + " -> ".join(result["runs"]) + "\n\n" + summary_tables(runs)
            + "\n## Change and regime per benchmark (%)\n\n" + change_table(result)
            + "\n```\n" + result["rule"] + "\n```\n")


def _plot(runs, rows: dict, path: Path) -> None:
    from megatron_prorl.plotting import figure  # late: matplotlib only when a chart is drawn

    labels = [label for label, _ in runs]
    with figure(path, (14, 4.4 * len(rows))) as fig:
        axes = fig.subplots(len(rows), 2, squeeze=False)
        for (curves, trend), (name, row) in zip(axes, rows.items()):
            draw_pass_at_k(curves, name, runs)
            x = range(len(labels))
            trend.plot(x, row["pass@1"], marker="o", lw=1.8, label="pass@1")
            trend.plot(x, row["pass@k"], marker="s", lw=1.8, label=f"pass@{row['k']}")
            trend.set_xticks(list(x), [short(label, 24) for label in labels], rotation=20, ha="right")
            trend.set(title=short(f"{row['regime']}: {name}"), ylabel="score", ylim=(0, 1.02))
            trend.legend(loc="best", framealpha=0.8)
