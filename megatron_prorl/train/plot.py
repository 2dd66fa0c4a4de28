"""PNG charts of a run's ``metrics.jsonl``: ``prorl plot RUN_DIR [--out DIR]``.

Writes into ``RUN_DIR/plots/`` (metric names: see :mod:`megatron_prorl.train.metrics`):

- ``overview.png``   the one to look at first: reward, validation, entropy, KL, length, time
- ``rewards.png``    training reward (all domains and per domain) and per-domain accuracy
- ``validation.png`` blended validation score and per-domain pass@1
- ``entropy_kl.png`` policy entropy and KL to the reference
- ``length.png``     response length (mean, max) and truncation rate
- ``timing.png``     stacked time breakdown per step and tokens/s
- ``stability.png``  clip fractions, importance ratio, engine-vs-trainer log-prob gap,
                     gradient norm, dynamic sampling, learning rate

Noisy per-step curves are drawn faint with a moving average on top; NaN/inf values (logged
as null) of a run-wide metric (KL, entropy, gradient norm, ...) are red crosses on the x axis. A
per-domain metric is null at a step that drew no prompt of that domain: a gap, not a marker.
Events (reference resets, stage changes, config changes on resume; not checkpoints) are dashed
vertical lines on every panel, labelled on the top row with their kind ("stage 8k", "reference
reset"; the whole text is in metrics.jsonl). Legends sit beside their panel, never over curves
or labels. A chart or panel whose metrics are absent is left out and reported, never an error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from megatron_prorl.plotting import figure
from megatron_prorl.train.metrics import read_metrics

PLOTS_DIR = "plots"
# Domains keep one colour across charts; red and purple are left to the event lines.
_DOMAIN_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:cyan", "tab:brown", "tab:pink",
                  "tab:olive", "tab:gray")
_SERIES_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:brown")
# Muted (ColorBrewer Set2, its eight colours) so the time areas do not read as domains or
# events; one per time metric, so each keeps its colour whichever others are present.
_STACK_COLORS = {"time/generation": "#8da0cb", "time/reward": "#fc8d62", "time/sleep": "#e5c494",
                 "time/reference": "#ffd92f", "time/training": "#b3b3b3", "time/release": "#e78ac3",
                 "time/wake": "#a6d854", "time/sync": "#66c2a5"}
_STACK_DEFAULT_COLOR = "#d9d9d9"
_EVENT_COLORS = {"reset": "firebrick", "stage": "indigo", "config": "darkgoldenrod"}
_EVENT_DEFAULT_COLOR = "dimgray"
_HIDDEN_EVENTS = ("checkpoint",)
_LABEL_LIMIT = 40  # characters of an event label (several events at one step share one)  # bookkeeping, one every few steps: lines would drown the curves
# Legend names for keys whose last path component would read badly.
_LABELS = {"reward/mean": "all domains", "val/score": "blended score", "time/step": "step total",
           "clip_frac_low": "low (1 - eps_low)", "clip_frac_high": "high (1 + eps_high)",
           "clip_frac_dual": "dual (c x |A| cap)",
           "ratio_mean": "mean", "ratio_max": "max"}


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    # Exact metric names, or "prefix/*" for every name under prefix (one series per domain).
    keys: tuple[str, ...]
    kind: str = "train"
    # "smooth": faint raw + moving average; "line"; "markers"; "stack": stacked areas.
    style: str = "smooth"
    # "stack" only: a metric drawn as a black line over the areas (the measured total).
    total: Optional[str] = None
    zero_based: bool = False
    log_y: bool = False


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    panels: tuple[Panel, ...]


REWARD = Panel("Training reward", "mean reward", ("reward/mean", "reward/*"))
ACCURACY = Panel("Training accuracy", "fraction correct", ("accuracy/*",), zero_based=True)
VALIDATION = Panel("Validation", "score / pass@1", ("val/score", "val/pass@1/*"), kind="val", style="markers")
ENTROPY = Panel("Policy entropy", "nats / token", ("entropy",))
KL = Panel("KL to reference", "KL estimate", ("kl",), zero_based=True)
LENGTH = Panel("Response length", "tokens", ("response_length/mean", "response_length/max"), zero_based=True)
TRUNCATION = Panel("Truncated responses", "fraction of responses", ("response_length/truncated_frac",),
                   zero_based=True)
TIME = Panel("Time per step", "seconds", ("time/generation", "time/reward", "time/sleep", "time/reference",
                                          "time/training", "time/release", "time/wake", "time/sync"),
             style="stack", total="time/step")
MEMORY = Panel("GPU memory at the switch to generation", "GiB (tightest rank)",
               ("mem/free_before_wake_gib", "mem/free_after_wake_gib", "mem/freed_gib"), style="line", zero_based=True)
THROUGHPUT = Panel("Throughput", "tokens / s", ("tokens_per_s",), zero_based=True)
CLIP = Panel("Clipped tokens", "fraction of tokens", ("clip_frac_low", "clip_frac_high", "clip_frac_dual"),
             zero_based=True)
RATIO = Panel("Importance ratio", "pi / pi_old", ("ratio_mean", "ratio_max"))
LOGPROB_GAP = Panel("Engine vs trainer log-prob", "|delta log p| per token", ("logprob_diff/mean", "logprob_diff/max"),
                    log_y=True)
GRAD_NORM = Panel("Gradient norm", "norm", ("grad_norm",), log_y=True)
SAMPLING = Panel("Dynamic sampling", "prompt groups", ("dynamic_sampling/kept", "dynamic_sampling/dropped"),
                 style="line", zero_based=True)
LR = Panel("Learning rate", "lr", ("lr",), style="line")

CHARTS = (
    Chart("overview", "Overview", (REWARD, VALIDATION, ENTROPY, KL, LENGTH, TIME)),
    Chart("rewards", "Rewards", (REWARD, ACCURACY)),
    Chart("validation", "Validation", (VALIDATION,)),
    Chart("entropy_kl", "Entropy and KL", (ENTROPY, KL)),
    Chart("length", "Response length", (LENGTH, TRUNCATION)),
    Chart("timing", "Timing", (TIME, THROUGHPUT, MEMORY)),
    Chart("stability", "Training stability", (CLIP, RATIO, LOGPROB_GAP, GRAD_NORM, SAMPLING, LR)),
)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` points that ignores NaN (partial windows at the edges)."""
    n = len(y)
    valid = np.isfinite(y)
    csum = np.concatenate([[0.0], np.cumsum(np.where(valid, y, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(n)
    lo = np.clip(idx - window // 2, 0, n)
    hi = np.clip(idx - window // 2 + window, 0, n)
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / count, np.nan)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # null or anything non-numeric: a gap in the curve
        return np.nan


def _expand(keys: Sequence[str], names: Sequence[str]) -> list[tuple[str, bool]]:
    """(name, from a wildcard) for the panel keys present in ``names``, exact keys first."""
    out = [(k, False) for k in keys if not k.endswith("/*") and k in names]
    exact = {k for k, _ in out}
    for k in keys:
        if k.endswith("/*"):
            prefix = k[:-1]
            out += [(n, True) for n in sorted(names) if n.startswith(prefix) and n not in exact]
    return out


def _series(records: Sequence[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(r["step"], _number(r[name])) for r in records if name in r]
    steps, values = zip(*rows)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _domain_colors(records: Sequence[dict]) -> dict[str, str]:
    domains = sorted({k.rsplit("/", 1)[1] for r in records for k in r
                      if k.startswith(("reward/", "accuracy/", "val/pass@1/")) and k != "reward/mean"})
    return {d: _DOMAIN_COLORS[i % len(_DOMAIN_COLORS)] for i, d in enumerate(domains)}


def _event_color(event: dict) -> str:
    return _EVENT_COLORS.get(event.get("category"), _EVENT_DEFAULT_COLOR)


def _event_label(event: dict) -> str:
    """What an event's line says: its kind, the text before the first colon ("stage 8k",
    "reference reset", "config changed on resume")."""
    return str(event.get("text", "")).partition(":")[0].strip()


def _event_labels(events: Sequence[dict], min_gap: float) -> list[tuple[float, str, str]]:
    """(step, colour, text) labels; events closer than ``min_gap`` steps (a reset at a stage
    change) share one label so their texts do not overprint."""
    groups: list[list[dict]] = []
    for event in events:  # sorted by step
        if groups and event["step"] - groups[-1][0]["step"] < min_gap:
            groups[-1].append(event)
        else:
            groups.append([event])
    labels = []
    for group in groups:
        text = " / ".join(dict.fromkeys(_event_label(e) for e in group))
        text = text if len(text) <= _LABEL_LIMIT else text[:_LABEL_LIMIT - 1] + "…"
        labels.append((group[0]["step"], _event_color(group[0]), text))
    return labels


class _Plotter:
    """Draws panels from one run's records (sorted by step, split by kind)."""

    def __init__(self, records: Sequence[dict]):
        ordered = sorted(records, key=lambda r: r["step"])
        self.by_kind = {kind: [r for r in ordered if r.get("kind") == kind] for kind in ("train", "val")}
        self.names = {kind: sorted({k for r in rs for k in r} - {"step", "kind", "time"})
                      for kind, rs in self.by_kind.items()}
        self.events = [r for r in ordered if r.get("kind") == "event" and r.get("category") not in _HIDDEN_EVENTS]
        self.domain_color = _domain_colors(ordered)
        steps = [r["step"] for r in ordered]
        lo, hi = (min(steps), max(steps)) if steps else (0, 1)
        self.last_step = hi
        self.xlim = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
        self.event_labels = _event_labels(self.events, (self.xlim[1] - self.xlim[0]) * 0.015)

    def present(self, panel: Panel) -> list[tuple[str, bool]]:
        return _expand(panel.keys, self.names.get(panel.kind, ()))

    def has_data(self, panel: Panel) -> bool:
        return bool(self.present(panel)) or panel.total in self.names.get(panel.kind, ())

    def draw(self, ax, panel: Panel, label_events: bool) -> None:
        records = self.by_kind[panel.kind]
        series = self.present(panel)
        if panel.style == "stack":
            self._stack(ax, records, panel, [name for name, _ in series])
        else:
            has_domains = any(wild for _, wild in series)
            for i, (name, wild) in enumerate(series):
                label = _LABELS.get(name, name.rsplit("/", 1)[-1])
                if wild:
                    color, width = self.domain_color.get(label, "tab:gray"), 1.6
                elif has_domains:  # the aggregate over domains: black and on top
                    color, width = "black", 2.4
                else:
                    color, width = _SERIES_COLORS[i % len(_SERIES_COLORS)], 1.8
                steps, values = _series(records, name)
                # A per-domain null is a step without that domain's prompts, not a divergence.
                self._curve(ax, panel.style, steps, values, label, color, width, mark_nonfinite=not wild)
            if len(ax.get_legend_handles_labels()[0]) > 1:
                _legend_beside(ax)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.set_xlim(*self.xlim)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel.style != "stack":
            _fit_y(ax, panel)
        self._events(ax, label_events)

    @staticmethod
    def _curve(ax, style: str, steps, values, label: str, color: str, width: float, mark_nonfinite: bool) -> None:
        window = max(1, min(50, len(steps) // 20))
        if style == "markers":  # sparse points (validation); dense ones would merge into a band
            ax.plot(steps, values, marker="o" if len(steps) <= 40 else None, markersize=5, lw=width, color=color,
                    label=label)
        elif style == "line" or window < 3:
            ax.plot(steps, values, lw=width, color=color, label=label)
        else:
            ax.plot(steps, values, lw=0.8, alpha=0.3, color=color)
            ax.plot(steps, moving_average(values, window), lw=width, color=color, label=label)
        bad = ~np.isfinite(values)
        if mark_nonfinite and bad.any():  # NaN / inf logged as null: a divergence worth seeing, not just a gap
            ax.plot(steps[bad], np.zeros(bad.sum()), "x", color="red", ms=7, mew=2, clip_on=False,
                    transform=blended_transform_factory(ax.transData, ax.transAxes), label=f"{label} (NaN/inf)")

    @staticmethod
    def _stack(ax, records: Sequence[dict], panel: Panel, names: list[str]) -> None:
        rows = [r for r in records if any(n in r for n in names)]
        if names and rows:
            steps = np.asarray([r["step"] for r in rows], dtype=float)
            parts = np.nan_to_num(np.asarray([[_number(r.get(n)) for r in rows] for n in names]))
            labels = [n.rsplit("/", 1)[-1] for n in names]
            ax.stackplot(steps, parts, labels=labels, colors=[_STACK_COLORS.get(n, _STACK_DEFAULT_COLOR) for n in names])
        if panel.total and any(panel.total in r for r in records):
            steps, values = _series(records, panel.total)
            ax.plot(steps, values, color="black", lw=1.4, label=_LABELS.get(panel.total, panel.total))
        # Areas stack bottom-up; list the legend top-down to match.
        _legend_beside(ax, reverse=True)
        ax.set_ylim(bottom=0)

    def _events(self, ax, label: bool) -> None:
        for event in self.events:
            ax.axvline(event["step"], color=_event_color(event), ls="--", lw=1.2, alpha=0.8)
        if not label:
            return
        transform = blended_transform_factory(ax.transData, ax.transAxes)
        lo, hi = self.xlim
        for step, color, text in self.event_labels:
            side = "left" if step - lo < 0.05 * (hi - lo) else "right"  # keep clear of the y axis
            ax.text(step, 0.97, f" {text}", transform=transform, rotation=90, va="top", ha=side,
                    fontsize=8, color=color, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))


def _legend_beside(ax, reverse: bool = False) -> None:
    """The legend right of the panel, outside it: nothing drawn inside is ever covered (a
    ``best`` position inside still lands on an event label or a curve when every spot has one)."""
    handles, labels = ax.get_legend_handles_labels()
    if reverse:
        handles, labels = handles[::-1], labels[::-1]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, framealpha=0.8)


def _fit_y(ax, panel: Panel) -> None:
    lo, hi = ax.dataLim.intervaly
    if not np.isfinite([lo, hi]).all():
        return
    # A constant metric (lr, or a moving average's rounding noise on one) would otherwise be
    # autoscaled into a zig-zag at 1e-16 resolution.
    flat = hi - lo <= 1e-9 * max(abs(lo), abs(hi))
    if panel.log_y and lo > 0:  # log only when every value can be shown on it
        ax.set_yscale("log")
        if flat:
            ax.set_ylim(hi / 2, hi * 2)
    elif flat:
        pad = abs(hi) * 0.1 or 1.0
        ax.set_ylim(0 if panel.zero_based and hi >= 0 else lo - pad, hi + pad)
    elif panel.zero_based and lo >= 0:
        ax.set_ylim(bottom=0)


def _grid(n: int) -> tuple[int, int, tuple[float, float]]:
    """(rows, cols, figure size in inches) for n panels."""
    if n == 1:
        return 1, 1, (10, 5.5)
    if n == 2:
        return 1, 2, (15, 5.5)
    if n == 3:
        return 1, 3, (19, 5.5)
    if n <= 4:
        return 2, 2, (15, 10)
    return 2, 3, (19, 10)


def plot_records(records: Sequence[dict], out_dir: str | Path, run_name: str = "") -> tuple[list[Path], list[str]]:
    """Write the charts of ``records`` (as :func:`read_metrics` returns them) into ``out_dir``.

    Returns the written paths and one line per chart or panel left out for lack of data."""
    plotter = _Plotter(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for chart in CHARTS:
        panels = [p for p in chart.panels if plotter.has_data(p)]
        missing = [p for p in chart.panels if p not in panels]
        if not panels:
            keys = sorted({k for p in chart.panels for k in p.keys})
            skipped.append(f"{chart.name}.png: no data for {', '.join(keys)}")
            continue
        skipped += [f"{chart.name}.png: panel '{p.title}' left out (no {', '.join(p.keys)})" for p in missing]
        rows, cols, size = _grid(len(panels))
        path = out_dir / f"{chart.name}.png"
        with figure(path, size) as fig:
            axes = fig.subplots(rows, cols, squeeze=False).ravel()
            for i, (ax, panel) in enumerate(zip(axes, panels)):
                plotter.draw(ax, panel, label_events=i < cols)
            for ax in axes[len(panels):]:
                ax.set_visible(False)
            fig.suptitle(f"{chart.title}: {run_name or 'run'} (up to step {plotter.last_step})")
        written.append(path)
    return written, skipped


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Charts of ``RUN_DIR/metrics.jsonl`` into ``out_dir`` (default ``RUN_DIR/plots``)."""
    return _plot_run(run_dir, out_dir)[0]


def _plot_run(run_dir: str | Path, out_dir: str | Path | None) -> tuple[list[Path], list[str]]:
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl has no records yet")
    return plot_records(records, out_dir or run_dir / PLOTS_DIR, run_dir.resolve().name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/plots)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prorl plot", description="Write PNG charts of a ProRL run's metrics.")
    add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        written, skipped = _plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as exc:  # one line: the usage says nothing about a bad file
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    for path in written:
        print(path)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
