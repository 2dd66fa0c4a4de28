"""Results of an evaluation, recomputed from its samples.jsonl: results.json, summary.md, plots.

Per source (and per domain inside a source that spans several, and per domain over all
sources): pass@k for each k (unbiased estimator, :func:`~megatron_prorl.eval.metrics.pass_at_k`;
a response counts as correct when its score is 1, so partial credit never passes), majority@k
for domains whose verifiers extract an answer (math, stem), the mean score (the continuous reward
itself), mean response length in tokens and the share of responses cut at the length limit. The
headline number of a benchmark is its domain's (:attr:`megatron_prorl.domains.Domain.headline`,
the paper's choice: pass@1 for math, code and STEM, the mean continuous reward for logic puzzles
and instruction following). ``summary.md`` lays them out like the paper's Tables 1-3: one table
per domain (in the domains' report order, under their titles), benchmarks as columns, one row
per model. A domain this process does not know (samples of a user's domain) reports pass@1.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from megatron_prorl import domains
from megatron_prorl.domains import Domain
from megatron_prorl.eval.metrics import majority_at_k, pass_at_k

RESULTS_FILE, SUMMARY_FILE, PLOT_FILE = "results.json", "summary.md", "pass_at_k.png"
CORRECT = 1.0 - 1e-9  # float rewards of exactly 1 may be stored as 0.9999999999


@dataclass
class Problem:
    domain: str
    scores: list[float] = field(default_factory=list)
    answers: list[Optional[str]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    @property
    def correct(self) -> list[bool]:
        return [s >= CORRECT for s in self.scores]


def problems_by_source(records: Sequence[dict]) -> dict[str, list[Problem]]:
    """Each source's problems (in problem order), each with its samples in sample order."""
    table: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        table[r["source"]][r["problem"]].append(r)
    out = {}
    for source, problems in table.items():
        out[source] = []
        for index in sorted(problems):
            samples = sorted(problems[index], key=lambda r: r["sample"])
            p = Problem(samples[0]["domain"])
            for r in samples:
                p.scores.append(float(r["score"]))
                p.answers.append(r.get("answer"))
                p.lengths.append(int(r["length"]))
                p.truncated.append(r["finish_reason"] == "length")
            out[source].append(p)
    return out


def curve_ks(n: int, ks: Sequence[int]) -> list[int]:
    """The requested ks and every power of two up to n (the points of a pass@k curve)."""
    return sorted({k for k in ks if k <= n} | {1 << i for i in range(n.bit_length()) if 1 << i <= n})


def domain_record(name: str) -> Domain:
    """The registered domain ``name``, or a stand-in reporting pass@1 under its name."""
    return domains.get(name) if name in domains.DOMAINS else Domain(name, verify=None)


def metrics(problems: Sequence[Problem], ks: Sequence[int]) -> dict:
    """Aggregate metrics of a set of problems (see the module docstring)."""
    n = min(len(p.scores) for p in problems)
    samples = sum(len(p.scores) for p in problems)
    names = {p.domain for p in problems}
    out = {
        "domain": names.pop() if len(names) == 1 else "mixed",
        "problems": len(problems), "samples": samples,
        "pass@k": {str(k): _mean(pass_at_k(len(p.scores), sum(p.correct), k) for p in problems)
                   for k in curve_ks(n, ks)},
        "mean_score": sum(sum(p.scores) for p in problems) / samples,
        "mean_length": sum(sum(p.lengths) for p in problems) / samples,
        "truncation_rate": sum(sum(p.truncated) for p in problems) / samples,
    }
    record = domain_record(out["domain"])
    if record.answers:
        out["majority@k"] = {str(k): _mean(majority_at_k(p.answers, p.correct, k) for p in problems)
                             for k in ks if k <= n}
    out["headline"] = out["mean_score"] if record.headline == "mean reward" else out["pass@k"]["1"]
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def compute_results(records: Sequence[dict], ks: Sequence[int], settings: Optional[dict] = None) -> dict:
    """results.json's content from samples.jsonl records."""
    if not records:
        raise ValueError("no samples to compute results from")
    by_source = problems_by_source(records)
    sources = {}
    by_domain: dict[str, list[Problem]] = defaultdict(list)
    for label, problems in by_source.items():
        entry = metrics(problems, ks)
        domains = sorted({p.domain for p in problems})
        if len(domains) > 1:
            entry["domains"] = {d: metrics([p for p in problems if p.domain == d], ks) for d in domains}
        sources[label] = entry
        for p in problems:
            by_domain[p.domain].append(p)
    return {"settings": settings or {}, "ks": sorted(set(ks)), "sources": sources,
            "domains": {d: metrics(ps, ks) for d, ps in sorted(by_domain.items())}}


def benchmarks(results: dict) -> list[tuple[str, dict]]:
    """(column name, metrics) of each benchmark: a source, or one domain of a mixed source."""
    out = []
    for label, entry in results["sources"].items():
        if "domains" in entry:
            out += [(f"{label}[{d}]", m) for d, m in entry["domains"].items()]
        else:
            out.append((label, entry))
    return out


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def summary_tables(runs: Sequence[tuple[str, dict]]) -> str:
    """The paper's Tables 1-3 layout: per domain, benchmarks as columns, one row per run."""
    columns: dict[str, list[str]] = defaultdict(list)
    for _, results in runs:
        for name, m in benchmarks(results):
            if name not in columns[m["domain"]]:
                columns[m["domain"]].append(name)
    parts = []
    for domain in domains.in_report_order(columns):
        names = columns[domain]
        record = domain_record(domain)
        avg = len(names) > 1
        parts.append(f"### {record.title} ({record.headline}, %)\n")
        parts.append("| model | " + " | ".join(names) + (" | Avg |" if avg else " |"))
        parts.append("|---" * (len(names) + 1 + avg) + "|")
        for label, results in runs:
            table = dict(benchmarks(results))
            values = [table[n]["headline"] if n in table else None for n in names]
            present = [v for v in values if v is not None]
            cells = [_pct(v) for v in values] + ([_pct(_mean(present)) if len(present) == len(values) else "-"]
                                                 if avg else [])
            parts.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def details_table(results: dict) -> str:
    """Every metric of every benchmark."""
    ks = results["ks"]
    head = (["benchmark", "domain", "problems", "samples"] + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
            + ["mean score", "mean length", "truncated %"])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, m in benchmarks(results):
        cells = [name, m["domain"], str(m["problems"]), str(m["samples"])]
        cells += [_pct(m["pass@k"].get(str(k))) for k in ks]
        cells += [_pct(m.get("majority@k", {}).get(str(k))) for k in ks]
        cells += [_pct(m["mean_score"]), f"{m['mean_length']:.1f}", _pct(m["truncation_rate"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(results: dict, path: Path, model_label: str, prompt: Optional[dict] = None) -> None:
    s = results["settings"]
    setting = (f"{s.get('samples')} samples per problem, temperature {s.get('temperature')}, top_p {s.get('top_p')}, "
               f"at most {s.get('max_new_tokens')} new tokens" if s else "")
    path.write_text(f"# Evaluation of {model_label}\n\n{setting}\n\n" + summary_tables([(model_label, results)])
                    + "\n## All metrics (%)\n\n" + details_table(results) + (prompt_table(prompt) if prompt else ""))


def prompt_table(prompt: dict) -> str:
    """How each problem was put to the model (a prorl_prompt.json record)."""
    rows = "".join(f"| {name} | {entry['instruction'] or '(none)'} |\n" for name, entry in prompt["domains"].items())
    return ("\n## Prompt format\n\nEach problem is one user turn, the problem then its domain's instruction on its "
            "own line, through the model's chat template with the generation prompt (`prorl_prompt.json` here holds "
            "it, chat template included).\n\n| domain | instruction |\n|---|---|\n" + rows)


def short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def draw_pass_at_k(ax, name: str, runs: Sequence[tuple[str, dict]]) -> None:
    """pass@k against k (log2 axis) of benchmark ``name``, one curve per run."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    every_k = set()
    for label, results in runs:
        m = dict(benchmarks(results)).get(name)
        if m is None:
            continue
        ks = sorted(int(k) for k in m["pass@k"])
        every_k.update(ks)
        ax.plot(ks, [m["pass@k"][str(k)] for k in ks], marker="o", ms=4, lw=1.8, label=short(label, 30))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(every_k))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title=short(name), xlabel="k", ylabel="pass@k", ylim=(0, 1.02))
    if len(runs) > 1:
        ax.legend(loc="lower right", framealpha=0.8)


def plot_pass_at_k(runs: Sequence[tuple[str, dict]], path: Path, title: str) -> Path:
    """pass@k against k: one panel per benchmark, one curve per run."""
    from megatron_prorl.plotting import figure  # late: matplotlib only when a chart is drawn

    names = list(dict.fromkeys(n for _, results in runs for n, _ in benchmarks(results)))
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    with figure(path, (6.3 * cols, 4.6 * rows)) as fig:
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, name in zip(axes, names):
            draw_pass_at_k(ax, name, runs)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        fig.suptitle(title)
    return path


def write_report(out_dir: str | Path, records: Sequence[dict], ks: Sequence[int], settings: dict,
                 model_label: str, prompt: Optional[dict] = None) -> dict:
    """results.json, summary.md and pass_at_k.png in ``out_dir``; returns the results.
    ``prompt``: the prompt format used (summary.md states it)."""
    out = Path(out_dir)
    results = compute_results(records, ks, settings)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    write_summary(results, out / SUMMARY_FILE, model_label, prompt)
    plot_pass_at_k([(model_label, results)], out / PLOT_FILE, f"pass@k of {model_label}")
    return results


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results (run `prorl eval ... --out {run_dir}` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
