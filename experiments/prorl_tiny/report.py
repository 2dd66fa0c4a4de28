"""The study's report: figures and ``study-prorl-tiny.md``, written from the results files only
(``metrics.jsonl`` and ``summary.json`` of each training run, ``results.json`` of each
evaluation, ``compare.json``, ``creativity.json``, the runner's ``.done`` records), with the
verdict on each of the paper's four claims decided by the explicit rules of :data:`RULES`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from experiments.prorl_tiny.study import (CREATIVITY_NGRAMS, EVAL_SETS, REPORT_NAME, Budget, benchmark_label,
                                          benchmark_set, creativity_files, default_out, disk_estimate, eval_problems, hours, plan,
                                          regime_evals, total_cost, training_runs)

# Verdict thresholds (absolute, on scores in [0, 1]); the report prints them with the rules.
DELTA_VAL = 0.03  # a move of the validation score (means of several validations)
COLLAPSE = 0.25  # entropy at the end below this share of its start: collapse
WEAK, STRONG = 0.5, 0.9  # base pass@K below / at least this: a task the base rarely / already solves
DELTA_K = 0.05  # a move of pass@1 or pass@K on an evaluation set (5 problems in 100)
RHO = -0.5  # Spearman correlation of base pass@K and its gain: "gains largest where weakest"
DELTA_CI = 0.01  # a move of the mean Creativity Index
VERDICTS = ("reproduced", "not reproduced", "mixed")


class MissingResults(Exception):
    pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise MissingResults(f"{path} is missing: run the study to the end first") from None


def _json(path: Path) -> dict:
    return json.loads(_read(path))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _read(path).splitlines() if line.strip()]


# --- reading results ----------------------------------------------------------------------

@dataclass
class Training:
    name: str
    steps: list[int]
    entropy: list[float]
    kl: list[float]
    reward: list[float]
    val_steps: list[int]
    val: list[float]
    resets: list[int]


def read_training(out: Path, name: str) -> Training:
    records = _jsonl(out / "train" / name / "metrics.jsonl")
    train = {r["step"]: r for r in records if r["kind"] == "train"}  # a resumed run repeats steps: keep the last
    val = {r["step"]: r["val/score"] for r in records if r["kind"] == "val"}
    resets = sorted({r["step"] for r in records if r["kind"] == "event" and r.get("category") == "reset"})
    steps = sorted(train)
    return Training(name, steps, [train[s].get("entropy", float("nan")) for s in steps],
                    [train[s].get("kl", float("nan")) for s in steps],
                    [train[s].get("reward/mean", float("nan")) for s in steps], sorted(val),
                    [val[s] for s in sorted(val)], resets)


def benchmarks(results: dict) -> dict[str, dict]:
    """Benchmark name -> metrics, as `prorl eval` names them (a mixed source splits by domain)."""
    out = {}
    for label, entry in results["sources"].items():
        if "domains" in entry:
            out.update({f"{label}[{d}]": m for d, m in entry["domains"].items()})
        else:
            out[label] = entry
    return out


def read_evals(out: Path, names: Sequence[str]) -> dict[str, dict[str, dict]]:
    return {n: benchmarks(_json(out / "eval" / n / "results.json")) for n in names}


def pass_at(metrics: dict, k: int) -> float:
    return metrics["pass@k"][str(k)]


# --- the numbers behind the verdicts --------------------------------------------------------

def window_mean(t: Training, end: int, width: int) -> float:
    """Mean validation score over the validations in (end - width, end]."""
    values = [v for s, v in zip(t.val_steps, t.val) if end - width < s <= end]
    if not values:
        raise MissingResults(f"{t.name}: no validation in steps ({end - width}, {end}]")
    return statistics.fmean(values)


def late_gain(t: Training, steps: int, width: int) -> float:
    return window_mean(t, steps, width) - window_mean(t, steps // 2, width)


def entropy_ratio(t: Training) -> float:
    n = max(1, len(t.entropy) // 10)
    return statistics.fmean(t.entropy[-n:]) / statistics.fmean(t.entropy[:n])


def ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            out[order[m]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Rank correlation; 0 when either side is constant (no association can be shown)."""
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 0.0


def spread(values: Sequence[float], pct: bool = True, sign: bool = False) -> str:
    """mean (min..max) over seeds."""
    f = (lambda v: f"{100 * v:+.1f}") if sign and pct else (lambda v: f"{100 * v:.1f}") if pct else \
        (lambda v: f"{v:+.3f}") if sign else (lambda v: f"{v:.3f}")
    mean = statistics.fmean(values)
    return f(mean) if len(values) == 1 else f"{f(mean)} ({f(min(values))}..{f(max(values))})"


@dataclass
class Verdict:
    claim: int
    title: str
    verdict: str
    evidence: list[str]  # markdown lines
    rule: str


def verdict_of(parts: Sequence[bool]) -> str:
    if all(parts):
        return "reproduced"
    return "not reproduced" if not any(parts) else "mixed"


def claim1(b: Budget, runs: dict[str, Training]) -> Verdict:
    width = max(b.steps // 5, b.val_every)
    full = [n for n in runs if n.startswith("full-")]
    gains = {n: late_gain(runs[n], b.steps, width) for n in runs if n != "short"}
    ends = {n: window_mean(runs[n], b.steps, width) for n in runs if n != "short"}
    ratios = {n: entropy_ratio(runs[n]) for n in runs}
    a = all(gains[n] >= DELTA_VAL for n in full)
    floor = min(ends[n] for n in full)
    worse = {}
    for name in ("no-kl", "no-reset"):
        worse[name] = gains[name] < DELTA_VAL or ratios[name] < COLLAPSE or ends[name] <= floor - DELTA_VAL
    if a and all(worse.values()):
        verdict = "reproduced"
    elif not a or not any(worse.values()):
        verdict = "not reproduced"
    else:
        verdict = "mixed"
    improving = sum(gains[n] >= DELTA_VAL for n in full)
    ev = [f"- Prolonged full recipe, validation score gain from step {b.steps // 2} to {b.steps} "
          f"(means of the validations in the last {width} steps before each): "
          f"{spread([gains[n] for n in full], sign=True)} points; still improving (>= {100 * DELTA_VAL:g}) in "
          f"{improving} of {len(full)} seed(s).",
          f"- Final validation score: full {spread([ends[n] for n in full])}, "
          + ", ".join(f"{n} {100 * ends[n]:.1f}" for n in ends if not n.startswith("full-")) + ".",
          "- Entropy at the end / at the start (collapse below "
          f"{COLLAPSE}): full {spread([ratios[n] for n in full], pct=False)}, "
          + ", ".join(f"{n} {ratios[n]:.3f}" for n in ratios if not n.startswith("full-")) + "."]
    for name, bad in worse.items():
        ev.append(f"- {name}: late gain {100 * gains[name]:+.1f}, final {100 * ends[name]:.1f}, entropy ratio "
                  f"{ratios[name]:.3f} -> {'stalls, collapses or ends worse' if bad else 'does as well as the full recipe'}.")
    rule = (f"reproduced if every full-recipe seed gains >= {100 * DELTA_VAL:g} validation points from the middle to "
            f"the end of the run AND both no-kl and no-reset stall (gain < {100 * DELTA_VAL:g}), collapse (entropy "
            f"ratio < {COLLAPSE}) or end >= {100 * DELTA_VAL:g} points below the worst full seed; not reproduced if "
            "the full recipe does not keep improving in every seed, or neither ablation is worse; mixed otherwise")
    return Verdict(1, "Prolonged training keeps improving with KL and reference resets", verdict, ev, rule)


def deltas(evals: dict, seeds: Sequence[str], name: str, k: int) -> list[float]:
    base = pass_at(evals["base"][name], k)
    return [pass_at(evals[s][name], k) - base for s in seeds]


def claim2(b: Budget, evals: dict, seeds: Sequence[str]) -> Verdict:
    k = b.regime_k
    names = list(evals["base"])
    weak = [n for n in names if pass_at(evals["base"][n], k) < WEAK]
    strong = [n for n in names if pass_at(evals["base"][n], k) >= STRONG]

    def moved(n, kk):
        d = deltas(evals, seeds, n, kk)
        return statistics.fmean(d) >= DELTA_K and min(d) > 0

    expanded = [benchmark_label(n) for n in weak if moved(n, k)]
    sharpened = [n for n in strong if moved(n, 1)]
    a = bool(weak) and len(expanded) * 2 >= len(weak) and bool(expanded)
    s = bool(strong) and len(sharpened) == len(strong)
    verdict = verdict_of([a, s])
    ev = [f"- Tasks the base rarely solves (base pass@{k} < {WEAK}): {len(weak)}; pass@{k} rose by >= "
          f"{100 * DELTA_K:g} points in every seed on {len(expanded)}: {', '.join(expanded) or 'none'}."]
    ev += [f"  - {benchmark_label(n)}: base pass@{k} {100 * pass_at(evals['base'][n], k):.1f}, change "
           f"{spread(deltas(evals, seeds, n, k), sign=True)}" for n in weak]
    ev += [f"- Tasks the base already solves (base pass@{k} >= {STRONG}): {len(strong)}; pass@1 rose by >= "
           f"{100 * DELTA_K:g} points in every seed on {len(sharpened)}."]
    ev += [f"  - {benchmark_label(n)}: pass@1 {spread(deltas(evals, seeds, n, 1), sign=True)}, pass@{k} "
           f"{spread(deltas(evals, seeds, n, k), sign=True)}"
           + (" (diminishing: pass@1 up, pass@K down)" if statistics.fmean(deltas(evals, seeds, n, 1)) >= DELTA_K
              and statistics.fmean(deltas(evals, seeds, n, k)) <= -DELTA_K else "") for n in strong]
    rule = (f"reproduced if pass@{k} rises (mean over seeds >= {100 * DELTA_K:g} points, every seed > 0) on at least "
            f"half (and at least one) of the tasks with base pass@{k} < {WEAK} AND pass@1 rises the same way on every "
            f"task with base pass@{k} >= {STRONG}; not reproduced if neither holds; mixed if one does (a group with "
            "no task counts as not holding)")
    return Verdict(2, "The reasoning boundary expands where the base is weak; pass@1 sharpens where it is strong",
                   verdict, ev, rule)


def claim3(b: Budget, evals: dict, seeds: Sequence[str]) -> Verdict:
    k = b.regime_k
    names = list(evals["base"])
    base_k = [pass_at(evals["base"][n], k) for n in names]
    rhos = [spearman(base_k, [pass_at(evals[s][n], k) - pass_at(evals["base"][n], k) for n in names]) for s in seeds]
    ood = [n for n in names if benchmark_set(n).kind != "in-distribution"]
    gaining = [benchmark_label(n) for n in ood if statistics.fmean(deltas(evals, seeds, n, k)) >= DELTA_K
               and min(deltas(evals, seeds, n, k)) > 0]
    c1, c2 = all(r <= RHO for r in rhos), bool(gaining)
    verdict = verdict_of([c1, c2])
    ev = [f"- Spearman correlation of base pass@{k} and its change, over the {len(names)} evaluation sets: "
          f"{spread(rhos, pct=False)} over {len(seeds)} seed(s).",
          f"- Out-of-distribution sets (harder variants and the never-trained task) whose pass@{k} rose by >= "
          f"{100 * DELTA_K:g} points in every seed: {', '.join(gaining) or 'none'} (of {len(ood)})."]
    ev += [f"  - {benchmark_label(n)} ({benchmark_set(n).kind}): pass@1 {spread(deltas(evals, seeds, n, 1), sign=True)}, "
           f"pass@{k} {spread(deltas(evals, seeds, n, k), sign=True)}" for n in ood]
    rule = (f"reproduced if the rank correlation of base pass@{k} and its change is <= {RHO} in every seed AND at "
            f"least one out-of-distribution set gains >= {100 * DELTA_K:g} points of pass@{k} (mean, every seed > 0); "
            "not reproduced if neither; mixed if one (base pass@K near 1 cannot rise, so part of a negative "
            "correlation is a ceiling: the out-of-distribution part is the substantive one)")
    return Verdict(3, "Gains are largest where the base is weakest, including out-of-distribution tasks",
                   verdict, ev, rule)


def claim4(creativity: dict, seeds: Sequence[str]) -> Verdict:
    mean = creativity["mean"]
    d = [mean[s] - mean["base"] for s in seeds]
    up = [x >= DELTA_CI for x in d]
    verdict = verdict_of(up)
    ev = [f"- Mean Creativity Index (L = {creativity['min_ngram']}..{creativity['max_ngram']} words, against the "
          f"tiny model's pretraining corpus of {creativity['corpus_words']:,} words): base {mean['base']:.3f}, "
          f"final {spread([mean[s] for s in seeds], pct=False)}; change {spread(d, pct=False, sign=True)}."]
    rule = (f"reproduced if the final model's mean index exceeds the base's by >= {DELTA_CI} in every seed; not "
            "reproduced if in no seed; mixed otherwise")
    return Verdict(4, "Responses become more novel relative to the pretraining corpus (Creativity Index)",
                   verdict, ev, rule)


# --- figures --------------------------------------------------------------------------------

STYLE = {"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
         "font.size": 10, "axes.titlesize": 10}
COLORS = {"base": "#444444", "full": "#1f77b4", "no-kl": "#d62728", "no-reset": "#ff7f0e", "no-ds": "#2ca02c",
          "short": "#9467bd"}


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _color(name: str) -> str:
    return COLORS["full"] if name.startswith("full-") else COLORS.get(name, "#777777")


def _smooth(values: Sequence[float], width: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > width:
            acc.pop(0)
        out.append(statistics.fmean(acc))
    return out


def plot_training(runs: dict[str, Training], path: Path) -> None:
    fig, axes = _figure(2, 2, (13, 8))
    width = max(1, max(len(t.steps) for t in runs.values()) // 40)
    panels = [("validation score (held-out pass@1, T=0.6)", None), ("policy entropy (train tokens)", "entropy"),
              ("KL(policy || reference)", "kl"), ("mean reward (train, T=1.2)", "reward")]
    for ax, (title, field) in zip(axes.ravel(), panels):
        for name, t in runs.items():
            full = name.startswith("full-")
            style = dict(color=_color(name), lw=1.6 if full else 1.2, alpha=0.8, ls="-" if full else "--")
            if field is None:
                ax.plot(t.val_steps, t.val, label=name, marker="o", ms=2.5, **style)
            else:
                ax.plot(t.steps, _smooth(getattr(t, field), width), label=name, **style)
        first = runs[next(iter(runs))]
        for s in first.resets:
            ax.axvline(s, color=COLORS["full"], alpha=0.15, lw=1)
        ax.set(title=title, xlabel="step")
    axes[0][0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Training curves (smoothed over {width} steps; faint lines: reference resets of {first.name})")
    fig.savefig(path, dpi=110)


def plot_pass_at_k(evals: dict, seeds: Sequence[str], others: Sequence[str], path: Path) -> None:
    names = list(evals["base"])
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = _figure(rows, cols, (4.2 * cols, 3.5 * rows))
    for ax, name in zip(axes.ravel(), names):
        ks = sorted(int(k) for k in evals["base"][name]["pass@k"])

        def curve(e):
            return [pass_at(evals[e][name], k) for k in ks]
        ax.plot(ks, curve("base"), color=COLORS["base"], lw=1.8, label="base")
        full = [curve(s) for s in seeds]
        ax.plot(ks, [statistics.fmean(c) for c in zip(*full)], color=COLORS["full"], lw=2, label=f"full ({len(seeds)} seeds)")
        if len(seeds) > 1:
            ax.fill_between(ks, [min(c) for c in zip(*full)], [max(c) for c in zip(*full)], color=COLORS["full"], alpha=0.2)
        for e in others:
            ax.plot(ks, curve(e), color=_color(e), lw=1.2, ls="--", label=e)
        ax.set_xscale("log", base=2)
        ax.set(title=f"{benchmark_label(name)} ({benchmark_set(name).kind})", xlabel="k", ylabel="pass@k", ylim=(-0.02, 1.02))
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("pass@k, base vs final models (band: min..max over seeds)")
    fig.savefig(path, dpi=110)


def plot_gains(evals: dict, seeds: Sequence[str], k: int, path: Path) -> None:
    fig, axes = _figure(1, 2, (13, 4.8))
    marks = {"in-distribution": "o", "harder": "s", "never trained": "^"}
    for ax, kk in zip(axes[0], (1, k)):
        for name in evals["base"]:
            base = pass_at(evals["base"][name], kk)
            d = deltas(evals, seeds, name, kk)
            m = statistics.fmean(d)
            ax.errorbar([base], [m], yerr=[[m - min(d)], [max(d) - m]], fmt=marks[benchmark_set(name).kind], ms=7,
                        capsize=3, label=f"{benchmark_label(name)} ({benchmark_set(name).kind})")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(title=f"change of pass@{kk} (final - base; mean, min..max over seeds)", xlabel=f"base pass@{kk}",
               ylabel=f"change of pass@{kk}", xlim=(-0.03, 1.03))
    axes[0][1].legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=110)


def plot_regimes(compare: dict, path: Path) -> None:
    fig, axes = _figure(1, 2, (13, 4.8))
    labels = compare["runs"]
    x = list(range(len(labels)))
    for name, row in compare["benchmarks"].items():
        for ax, key in zip(axes[0], ("pass@1", "pass@k")):
            ax.plot(x, row[key], marker="o", lw=1.5, label=f"{benchmark_label(name)}: {row['regime']}")
    k = next(iter(compare["benchmarks"].values()))["k"]
    for ax, title in zip(axes[0], ("pass@1", f"pass@{k}")):
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set(title=f"{title} along the run", ylim=(-0.02, 1.02))
    axes[0][1].legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=110)


def plot_creativity(creativity: dict, path: Path) -> None:
    fig, axes = _figure(1, 2, (12, 4.2))
    files = list(creativity["mean"])
    axes[0][0].bar(files, [creativity["mean"][f] for f in files],
                   color=[COLORS["base"] if f == "base" else COLORS["full"] for f in files])
    axes[0][0].set(title="mean Creativity Index (1: nothing copied)", ylim=(0, 1))
    for f in files:
        u = creativity["uniqueness"][f]
        ls = sorted(u, key=int)
        axes[0][1].plot([int(L) for L in ls], [u[L] for L in ls], marker="o", label=f,
                        color=COLORS["base"] if f == "base" else None)
    axes[0][1].set(title="L-uniqueness (share of words in no corpus span of L words)", xlabel="L", ylim=(-0.02, 1.02),
                   xticks=[int(L) for L in sorted(creativity["uniqueness"][files[0]], key=int)])
    axes[0][1].legend(fontsize=8)
    fig.savefig(path, dpi=110)


# --- the document ---------------------------------------------------------------------------

def _regime_table(out: Path, b: Budget, seeds: Sequence[str]) -> tuple[str, dict]:
    along = _json(out / "compare" / "regimes" / "compare.json")
    per_seed = {s: _json(out / "compare" / f"base-vs-{s}" / "compare.json") for s in seeds}
    head = ["evaluation set", "kind", f"along {regime_evals(b)[-1]}: " + " -> ".join(along["runs"]), "why"]
    head += [f"base -> {s}" for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, row in along["benchmarks"].items():
        lines.append("| " + " | ".join([benchmark_label(name), benchmark_set(name).kind, f"**{row['regime']}**", row["why"]]
                                       + [per_seed[s]["benchmarks"][name]["regime"] for s in seeds]) + " |")
    return "\n".join(lines), along


def _budget_section(out: Path, b: Budget) -> str:
    from experiments.prorl_tiny.runner import done_record

    c = b.cost
    units = plan(b)
    kinds: dict[str, list] = {}
    for u in units:
        rec = done_record(out, u) or {}
        kinds.setdefault(u.kind, []).append((u.cost, rec.get("cpu_s"), rec.get("wall_s")))
    rows = ["| units | count | estimated CPU | measured CPU | measured wall |", "|---|---|---|---|---|"]
    for kind, items in kinds.items():
        measured = [m for _, m, _ in items if m is not None]
        walls = [w for _, _, w in items if w is not None]
        rows.append(f"| {kind} | {len(items)} | {hours(sum(e for e, _, _ in items))} | "
                    f"{hours(sum(measured)) if len(measured) == len(items) else '-'} | "
                    f"{hours(sum(walls)) if len(walls) == len(items) else '-'} |")
    runs = training_runs(b)
    long_runs = [r for r in runs if r.steps == b.steps]
    responses = eval_problems(b) * b.samples
    n_evals = sum(u.kind == "eval" for u in units)
    train = sum(c.train_start + r.steps * c.train_step for r in runs)
    evals = n_evals * (c.eval_start + responses * c.eval_response)
    measured = [r.get("cpu_s") for r in (done_record(out, u) for u in units) if r]
    return "\n".join([
        f"Budget `{b.name}`. The plan's estimate, from CPU costs of one thread measured on this project's 2-core "
        f"machine (shared with other work, so CPU seconds, not wall time, are the stable figure): {c.measured}",
        "",
        f"- training: {len(long_runs)} runs x {b.steps} steps + {b.short_steps} steps (the default run) = "
        f"{sum(r.steps for r in runs)} steps x {c.train_step} s + {len(runs)} starts x {c.train_start:.0f} s = "
        f"{hours(train)}",
        f"- evaluation: {n_evals} evaluations x ({eval_problems(b)} problems x {b.samples} samples = {responses:,} "
        f"responses x {c.eval_response * 1e3:.2f} ms + {c.eval_start:.0f} s start) = {hours(evals)}",
        f"- corpus, comparisons, Creativity Index, report: {hours(total_cost(b) - train - evals)}",
        f"- total: **{hours(total_cost(b))} of CPU**, about {hours(total_cost(b) / 2)} of wall time with "
        f"`--jobs 2` on 2 free cores; about {disk_estimate(b) / 1e9:.1f} GB of disk (evaluation samples and "
        "every checkpoint).",
        "",
        "Measured in this study's run (per unit kind; `-` where some units ran before the runner recorded them):",
        "",
        *rows,
        "",
        f"Total measured: {hours(sum(m for m in measured if m is not None))} of CPU.",
    ])


def recipe(out: Path, run: str) -> str:
    """The recipe's knobs as the run recorded them (its config.yaml)."""
    import yaml

    cfg = yaml.safe_load(_read(out / "train" / run / "config.yaml"))
    algo, rollout, batch = cfg["algo"], cfg["rollout"], cfg["batch"]
    reset = cfg["reset"]["every_n_steps"]
    return (f"{algo['advantage'].upper()}, {algo['policy_loss']} {algo['eps_low']}/{algo['eps_high']}, dynamic "
            f"sampling {'on' if algo['dynamic_sampling'] else 'off'}, {algo['kl_estimator']} KL with beta "
            f"{algo['kl_beta']}, " + (f"reference and optimizer reset every {reset} steps" if reset else "no resets")
            + f", T={rollout['temperature']}, {batch['prompts_per_step']} prompts x {rollout['n']} samples per "
            f"step, LR {cfg['optim']['lr']}")


def write_report(out: Path, b: Budget, report_dir: Path, command: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    runs = training_runs(b)
    seeds = [r.name for r in runs if r.role == "full"]
    others = [r.name for r in runs if r.role != "full"]
    training = {r.name: read_training(out, r.name) for r in runs}
    evals = read_evals(out, ["base", *seeds, *others])
    creativity = _json(out / "creativity" / "creativity.json")
    regime_md, along = _regime_table(out, b, seeds)
    verdicts = [claim1(b, {n: t for n, t in training.items()}), claim2(b, evals, seeds), claim3(b, evals, seeds),
                claim4(creativity, seeds)]

    figs = report_dir / REPORT_NAME
    figs.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(STYLE):
        plot_training(training, figs / "training.png")
        plot_pass_at_k(evals, seeds, others, figs / "pass_at_k.png")
        plot_gains(evals, seeds, b.regime_k, figs / "gains.png")
        plot_regimes(along, figs / "regimes.png")
        plot_creativity(creativity, figs / "creativity.png")

    k = b.regime_k
    fig = REPORT_NAME
    table = ["| evaluation set | kind | base pass@1 | full pass@1 | base pass@" + str(k) + " | full pass@" + str(k)
             + " | " + " | ".join(f"{o} pass@1" for o in others) + " |", "|---" * (6 + len(others)) + "|"]
    for name, m in evals["base"].items():
        table.append(f"| {benchmark_label(name)} | {benchmark_set(name).kind} | {100 * pass_at(m, 1):.1f} | "
                     f"{spread([pass_at(evals[s][name], 1) for s in seeds])} | {100 * pass_at(m, k):.1f} | "
                     f"{spread([pass_at(evals[s][name], k) for s in seeds])} | "
                     + " | ".join(f"{100 * pass_at(evals[o][name], 1):.1f}" for o in others) + " |")
    smoke = b.name != "full"
    parts = [f"# ProRL's claims at laptop scale: the embedded tiny model{' (SMOKE RUN: not a result)' if smoke else ''}",
             ""]
    if smoke:
        parts += [f"> **Smoke budget `{b.name}`**: a few steps and samples to test the pipeline end to end. The "
                  "numbers and verdicts below mean nothing; run the full budget for the study.", ""]
    parts += [
        f"Generated by `python -m experiments.prorl_tiny report --budget {b.name}` from the results in the study's "
        "output directory; do not edit by hand.",
        "",
        "## Summary",
        "",
        "| claim (ProRL, arXiv 2505.24864) | verdict at this scale |",
        "|---|---|",
        *[f"| {v.claim}. {v.title} | **{v.verdict}** |" for v in verdicts],
        "",
        f"Seeds: the full recipe ran with {len(seeds)} seed(s) ({', '.join(seeds)}); each ablation and the default "
        "run with one (the first seed), so ablation differences smaller than the full recipe's seed spread are "
        "not evidence. Numbers are `mean (min..max)` over the full recipe's seeds.",
        "",
        "## Setup",
        "",
        "- Model: the embedded tiny Qwen2 (`builtin:tiny`, byte tokenizer), warmed up by "
        "`scripts/make_tiny_model.py` on 2-digit additions and 1-digit Reasoning Gym chain sums until partially "
        "competent; it answers in at most 20 tokens, with no reasoning before the answer.",
        f"- Recipe: `configs/tiny_cpu.yaml` as shipped ({recipe(out, runs[0].name)}), run for {b.steps} steps "
        f"instead of {b.short_steps}" + (f", with `{' '.join(b.train_overrides)}`" if b.train_overrides else "")
        + ".",
        "- Runs: " + "; ".join(f"`{r.name}`: {r.what}, seed {r.seed}, {r.steps} steps" for r in runs) + ".",
        f"- Evaluation: `prorl eval`, {b.samples} samples per problem at T=0.6, top_p 0.95 (the paper's settings), "
        f"at most 24 new tokens, pass@1..{b.samples} by the unbiased estimator; {b.size} problems per generated "
        "set, the held-out file whole:",
        *[f"  - {s.label} ({s.kind}), `{s.source}`: {s.what}" for s in EVAL_SETS],
        "",
        "### Final pass@k (%)",
        "",
        *table,
        "",
        f"![pass@k curves]({fig}/pass_at_k.png)",
        "",
    ]
    figures = {1: ["training.png"], 2: ["pass_at_k.png"], 3: ["gains.png"], 4: ["creativity.png"]}
    for v in verdicts:
        parts += [f"## Claim {v.claim}: {v.title}", "", *v.evidence, "",
                  f"**Verdict (claim {v.claim}): {v.verdict}** (rule: {v.rule}).", ""]
        parts += [f"![claim {v.claim}]({fig}/{f})" for f in figures[v.claim] if not (v.claim == 2 and f == "pass_at_k.png")]
        parts.append("")
    parts += [
        "## Regimes",
        "",
        f"`prorl eval compare` over the checkpoints of `{regime_evals(b)[-1]}` (and base -> final for every seed), "
        f"with pass@K at K={k}:",
        "",
        regime_md,
        "",
        "```",
        along["rule"],
        "```",
        "",
        f"![regimes]({fig}/regimes.png)",
        "",
        "## Creativity Index",
        "",
        "`prorl eval creativity` of every response of the base and final models (all evaluation sets"
        + (f", the first {b.creativity_limit} of each file" if b.creativity_limit else "")
        + ") against the tiny model's own pretraining corpus, regenerated by `scripts/make_tiny_model.py "
        f"--corpus-only` (every distinct warm-up example, prompt and answer). L runs over "
        f"{CREATIVITY_NGRAMS[0]}..{CREATIVITY_NGRAMS[1]} words, not the paper's 5..12: a well-formed answer is 5 "
        "words (`\\ boxed { 57 }`) or 9 (`< answer > 4 < / answer >`), and a response shorter than L counts as "
        "wholly novel at that L, so longer spans would measure length, not copying. What remains novel at this "
        "scale is mostly a number or a format the corpus never had.",
        "",
        "| responses | mean index | " + " | ".join(f"L={L}" for L in range(CREATIVITY_NGRAMS[0], CREATIVITY_NGRAMS[1] + 1))
        + " |",
        "|---" * (2 + CREATIVITY_NGRAMS[1] - CREATIVITY_NGRAMS[0] + 1) + "|",
        *[f"| {f} | {creativity['mean'][f]:.3f} | "
          + " | ".join(f"{creativity['uniqueness'][f][str(L)]:.3f}"
                       for L in range(CREATIVITY_NGRAMS[0], CREATIVITY_NGRAMS[1] + 1)) + " |"
          for f in creativity_files(b)],
        "",
        "## What this scale can and cannot show",
        "",
        "The tiny model answers directly (a `\\boxed{}` or `<answer>` after at most 20 tokens): there is no chain "
        "of thought for RL to lengthen or reorganise, so the \"reasoning boundary\" here is the set of problems "
        "whose answer the model can sample at all, and a gain out of distribution means the arithmetic it learned "
        f"transfers to longer numbers or other operators. A {b.steps}-step run takes about "
        f"{hours(b.cost.train_start + b.steps * b.cost.train_step)} of CPU, so {len(seeds)} seed(s) of the full "
        "recipe fit the budget; the ablations have one seed each, which the verdict rules account for only "
        "through the full recipe's worst seed.",
        "",
        "## Budget",
        "",
        _budget_section(out, b),
        "",
        "## How to rerun",
        "",
        "From a fresh clone (Python >= 3.11, CPU only), in the repository root:",
        "",
        "```bash",
        "bash scripts/install.sh",
        command,
        "```",
        "",
        f"It runs every unit above as a `prorl` command in `{default_out(b.name)}`"
        " (`--out` elsewhere; logs in `OUT/logs/`), skips units already finished, and "
        "resumes an interrupted one (`prorl train` from its latest checkpoint, `prorl eval` from its finished "
        "chunks): after a kill, rerun the same command. It prints progress and the remaining time every minute, "
        "and writes this report at the end; "
        f"`{command.replace(' run', ' report')}` rewrites it from the results alone, and "
        f"`{command.replace(' run', ' plan')}` lists the units, which are done, and their estimated CPU time "
        "(both take the same `--out`).",
        "",
        "## Verdict rules",
        "",
        "Thresholds (absolute, scores in [0, 1]): "
        f"validation move {DELTA_VAL}, entropy collapse ratio {COLLAPSE}, weak task base pass@K < {WEAK}, strong "
        f"task base pass@K >= {STRONG}, pass@k move {DELTA_K}, rank correlation {RHO}, Creativity Index move "
        f"{DELTA_CI}.",
        "",
        *[f"{v.claim}. {v.rule}." for v in verdicts],
        "",
    ]
    path = report_dir / f"{REPORT_NAME}.md"
    path.write_text("\n".join(parts))
    return path
