"""Metrics logging (JSON lines, TensorBoard, progress bar, resume) and `prorl plot` charts."""

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megatron_prorl.train import metrics as metrics_mod
from megatron_prorl.config import LoggingConfig
from megatron_prorl.train.metrics import METRICS_FILE, MetricsLogger, read_metrics
from megatron_prorl.train.plot import CHARTS, _event_labels, _Plotter, main, moving_average, plot_records, plot_run

QUIET = LoggingConfig(progress=False)
FILES_ONLY = LoggingConfig(progress=False, tensorboard=False)


def _strict_lines(path: Path) -> list[dict]:
    """Parse as standard JSON: NaN / Infinity tokens are rejected."""
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token} in {path}")
    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_log_writes_standard_json_lines_with_nonfinite_as_null(tmp_path):
    with MetricsLogger(tmp_path, FILES_ONLY, total_steps=10) as logger:
        logger.log(1, {"reward/mean": np.float32(0.5), "kl": float("nan"), "grad_norm": float("inf"),
                       "dynamic_sampling/kept": 7, "flag": True})
        logger.log(1, {"val/score": 0.25}, kind="val")
        logger.log_event(1, "reference reset", category="reset")
    first, val, event = _strict_lines(tmp_path / METRICS_FILE)
    assert first["step"] == 1 and first["kind"] == "train" and abs(first["time"] - __import__("time").time()) < 60
    assert first["reward/mean"] == 0.5 and first["kl"] is None and first["grad_norm"] is None
    assert first["dynamic_sampling/kept"] == 7 and first["flag"] == 1
    assert (val["kind"], val["val/score"]) == ("val", 0.25)
    assert (event["kind"], event["text"], event["category"]) == ("event", "reference reset", "reset")
    assert read_metrics(tmp_path) == [first, val, event]


def test_each_line_is_on_disk_before_close(tmp_path):
    logger = MetricsLogger(tmp_path, FILES_ONLY, total_steps=10)
    logger.log(1, {"kl": 0.1})
    assert [r["kl"] for r in read_metrics(tmp_path)] == [0.1]  # a killed run keeps it
    logger.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to make every write fail with ENOSPC")
def test_a_full_disk_while_logging_is_a_user_error_naming_the_directory(tmp_path):
    (tmp_path / METRICS_FILE).symlink_to("/dev/full")  # every write: "No space left on device"
    logger = MetricsLogger(tmp_path, FILES_ONLY, total_steps=10)
    with pytest.raises(metrics_mod.DiskFullError, match=f"^{tmp_path}: no space left on device while logging step 3;"):
        logger.log(3, {"kl": 0.1})
    with pytest.raises(metrics_mod.DiskFullError, match="while logging; checkpoints already written are intact"):
        logger.close()  # the unwritten line is still buffered
    logger.close()  # closed once, whatever failed


def test_a_full_disk_under_tensorboard_is_the_same_one_line(tmp_path, monkeypatch):
    logger = MetricsLogger(tmp_path, QUIET, total_steps=10)

    def full(*args):  # what TensorBoard's writer thread re-raises on the next write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(logger._tb, "add_scalar", full)
    with pytest.raises(metrics_mod.DiskFullError, match=f"^{tmp_path}: no space left on device while logging step 2;"):
        logger.log(2, {"kl": 0.1})
    logger.close()


def test_errors_other_than_a_full_disk_pass_through(tmp_path, monkeypatch):
    logger = MetricsLogger(tmp_path, FILES_ONLY, total_steps=10)
    monkeypatch.setattr(logger, "_write", lambda record: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(PermissionError):
        logger.log(1, {"kl": 0.1})
    logger.close()


def test_bad_metrics_are_rejected_with_the_name(tmp_path):
    with MetricsLogger(tmp_path, FILES_ONLY, total_steps=10) as logger:
        with pytest.raises(TypeError, match="'reward/math'.*str"):
            logger.log(1, {"reward/math": "high"})
        with pytest.raises(ValueError, match="reserved"):
            logger.log(1, {"step": 3})
        with pytest.raises(ValueError, match="kind 'eval'"):
            logger.log(1, {"kl": 0.0}, kind="eval")
    with pytest.raises(ValueError, match="logging.log_every=0"):
        MetricsLogger(tmp_path, LoggingConfig(log_every=0), total_steps=10)


def test_tensorboard_gets_scalars_under_kind_tags(tmp_path):
    with MetricsLogger(tmp_path, QUIET, total_steps=10) as logger:
        logger.log(1, {"reward/math": 0.25, "kl": float("nan")})
        logger.log(2, {"reward/math": 0.5, "kl": 0.01})
        logger.log(2, {"val/score": 0.4, "val/pass@1/math": 0.5}, kind="val")
    assert _scalars(tmp_path, "train/reward/math") == [(1, 0.25), (2, 0.5)]
    kl = _scalars(tmp_path, "train/kl")
    assert math.isnan(kl[0][1]) and kl[1] == (2, pytest.approx(0.01))
    assert _scalars(tmp_path, "val/score") == [(2, pytest.approx(0.4))]  # not "val/val/score"
    assert _scalars(tmp_path, "val/pass@1/math") == [(2, 0.5)]


def test_disabled_logger_is_a_no_op(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsLogger(run_dir, LoggingConfig(), total_steps=10, enabled=False) as logger:
        logger.log(1, {"kl": 0.1, "anything": "not even checked"})
        logger.log_event(1, "reset")
        assert not logger.should_log(1)
    assert not run_dir.exists()


def test_log_every_thins_train_records_but_keeps_the_last_and_val(tmp_path):
    with MetricsLogger(tmp_path, LoggingConfig(progress=False, tensorboard=False, log_every=2),
                       total_steps=5) as logger:
        for step in range(1, 6):
            logger.log(step, {"kl": step / 10})
        logger.log(5, {"val/score": 0.3}, kind="val")
    assert [(r["step"], r["kind"]) for r in read_metrics(tmp_path)] == [(2, "train"), (4, "train"), (5, "train"),
                                                                        (5, "val")]


def test_progress_bar_shows_the_key_numbers(tmp_path, capsys):
    with MetricsLogger(tmp_path, LoggingConfig(tensorboard=False), total_steps=3) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"reward/mean": 0.123456, "kl": 0.002, "entropy": 0.9, "time/step": 12.0})
        logger.log(3, {"val/score": 0.5}, kind="val")
        logger.log_event(3, "stage 2: max length 16384")
    err = capsys.readouterr().err
    assert "3/3" in err and "reward=0.123" in err and "val=0.5" in err and "s/step=12" in err
    assert "[step 3] stage 2: max length 16384" in err


def _log_steps(run_dir: Path, steps, value=lambda s: s / 10, resume_step=None) -> None:
    with MetricsLogger(run_dir, QUIET, total_steps=10, resume_step=resume_step) as logger:
        for step in steps:
            logger.log(step, {"kl": value(step)})
            if step == 3:
                logger.log_event(step, "reference reset", category="reset")


def test_resume_drops_records_past_the_checkpoint(tmp_path):
    _log_steps(tmp_path, range(1, 6))  # killed after step 5; the checkpoint is at step 3
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 6, "kind": "tr')  # torn by the kill
    _log_steps(tmp_path, [4], value=lambda s: 100.0, resume_step=3)
    records = read_metrics(tmp_path)
    assert [(r["step"], r["kind"]) for r in records] == [(1, "train"), (2, "train"), (3, "train"), (3, "event"),
                                                        (4, "train")]
    assert records[-1]["kl"] == 100.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE, "tensorboard"]  # no temp file left
    # TensorBoard discards the killed run's steps 4 and 5 too.
    assert [(s, v) for s, v in _scalars(tmp_path, "train/kl")] == [
        (1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.3)), (4, 100.0)]


def test_resume_truncation_is_atomic(tmp_path, monkeypatch):
    _log_steps(tmp_path, range(1, 6))
    before = (tmp_path / METRICS_FILE).read_bytes()

    def crash(*args):
        raise OSError("disk gone")
    monkeypatch.setattr(metrics_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        MetricsLogger(tmp_path, QUIET, total_steps=10, resume_step=2)
    assert (tmp_path / METRICS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE, "tensorboard"]


@pytest.mark.parametrize("resume_step", [None, 0])
def test_fresh_run_replaces_an_old_log(tmp_path, resume_step):
    with MetricsLogger(tmp_path, FILES_ONLY, total_steps=10) as logger:
        logger.log(0, {"val/score": 0.1}, kind="val")  # baseline validation
        logger.log(1, {"kl": 0.1})
    with MetricsLogger(tmp_path, FILES_ONLY, total_steps=10, resume_step=resume_step) as logger:
        logger.log(0, {"val/score": 0.2}, kind="val")
    assert [(r["step"], r["val/score"]) for r in read_metrics(tmp_path)] == [(0, 0.2)]


def test_event_category_is_read_off_the_text_when_not_given(tmp_path):
    with MetricsLogger(tmp_path, FILES_ONLY, total_steps=10) as logger:
        for text in ("stage long: n=16 T=1.2", "reference reset: kl 0.2 > 0.1", "checkpoint runs/x/step_5",
                     "stopping on signal"):
            logger.log_event(5, text)
        logger.log_event(5, "warm-up over", category="stage")
    assert [r["category"] for r in read_metrics(tmp_path)] == ["stage", "reset", "checkpoint", "event", "stage"]


def test_malformed_middle_line_names_file_and_line(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "kind": "train"}\nnot json\n{"step": 2, "kind": "train"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: malformed"):
        read_metrics(tmp_path)


def test_moving_average_ignores_nan():
    y = np.array([1.0, np.nan, 3.0, 5.0, np.nan, np.nan, np.nan, 7.0])
    out = moving_average(y, 3)
    expected = [np.nanmean(y[max(0, i - 1):i + 2]) if np.isfinite(y[max(0, i - 1):i + 2]).any() else np.nan
                for i in range(len(y))]
    np.testing.assert_allclose(out, expected)


def test_events_at_nearby_steps_share_one_label():
    events = [{"step": 30, "text": "stage 2", "category": "stage"},
              {"step": 30, "text": "reference reset", "category": "reset"},
              {"step": 500, "text": "reference reset", "category": "reset"}]
    assert _event_labels(events, min_gap=15) == [(30, "indigo", "stage 2 / reference reset"),
                                                (500, "firebrick", "reference reset")]


def _synthetic_run(run_dir: Path, steps: int = 60) -> None:
    """A run as the trainer logs it: 2 domains, validation every 20 steps, a reset and a stage change."""
    rng = np.random.default_rng(0)
    with MetricsLogger(run_dir, FILES_ONLY, total_steps=steps) as logger:
        logger.log(0, {"val/score": 0.2, "val/pass@1/math": 0.25, "val/pass@1/code": 0.15}, kind="val")
        for s in range(1, steps + 1):
            math_r, code_r = 0.3 + 0.5 * s / steps + rng.normal(0, 0.08), 0.1 + 0.3 * s / steps + rng.normal(0, 0.08)
            logger.log(s, {
                "reward/mean": (math_r + code_r) / 2, "reward/math": math_r, "reward/code": code_r,
                "accuracy/math": min(1, max(0, math_r)), "accuracy/code": min(1, max(0, code_r)),
                "response_length/mean": 800 + 10 * s, "response_length/max": 4096,
                "response_length/truncated_frac": max(0.0, 0.1 - s / 1000),
                "entropy": 0.9 - 0.005 * s + rng.normal(0, 0.02), "kl": float("nan") if s == 7 else 0.001 * (s % 30),
                "clip_frac_low": 0.002, "clip_frac_high": 0.01, "ratio_mean": 1.0, "ratio_max": 3.0,
                "dynamic_sampling/kept": 28, "dynamic_sampling/dropped": 4, "dynamic_sampling/rounds": 1,
                "logprob_diff/mean": 0.01, "logprob_diff/max": 0.5, "grad_norm": 0.3, "lr": 2e-6,
                "time/generation": 30.0, "time/reward": 2.0, "time/reference": 3.0, "time/training": 12.0,
                "time/sync": 1.0, "time/step": 49.0, "tokens_per_s": 2000.0, "sync/gb_per_s": 12.0,
            })
            if s % 20 == 0:
                logger.log(s, {"val/score": 0.2 + s / 200, "val/pass@1/math": 0.25 + s / 150,
                               "val/pass@1/code": 0.15 + s / 300}, kind="val")
            if s == 30:
                logger.log_event(s, "reference + optimizer reset", category="reset")
            if s == 45:
                logger.log_event(s, "stage 2: max length 16384", category="stage")
            if s % 10 == 0:
                logger.log_event(s, f"checkpoint {run_dir}/step_{s}")  # not drawn


def _check_png(path: Path, min_w: int = 800, min_h: int = 400) -> None:
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_w and height >= min_h, (path.name, image.shape)
    assert image[..., :3].std() > 0.05, f"{path.name} looks blank"


def test_plot_run_writes_every_chart(tmp_path):
    _synthetic_run(tmp_path)
    written = plot_run(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{c.name}.png" for c in CHARTS)
    assert all(p.parent == tmp_path / "plots" for p in written)
    for path in written:
        _check_png(path)
    assert imread(tmp_path / "plots/overview.png").shape[1] > 1600  # a 2 x 3 grid
    drawn = _Plotter(read_metrics(tmp_path)).events
    assert [(e["step"], e["category"]) for e in drawn] == [(30, "reset"), (45, "stage")]  # checkpoints are not


def test_missing_metrics_and_nulls_are_skipped_not_fatal(tmp_path):
    records = [{"step": s, "kind": "train", "reward/mean": None if s == 3 else s / 10, "entropy": "bogus"}
               for s in range(1, 6)]
    records += [{"step": 2, "kind": "event", "text": "x" * 80}, {"step": 4, "kind": "train", "kl": None}]
    written, skipped = plot_records(records, tmp_path)
    assert sorted(p.name for p in written) == ["entropy_kl.png", "overview.png", "rewards.png"]
    for name in ("validation.png", "length.png", "timing.png", "stability.png"):
        assert any(line.startswith(name + ": no data") for line in skipped), (name, skipped)
    assert any("rewards.png: panel 'Training accuracy'" in line for line in skipped)
    for path in written:
        _check_png(path, min_w=500, min_h=300)


def test_cli_prints_paths_and_honours_out(tmp_path, capsys):
    with MetricsLogger(tmp_path / "run", FILES_ONLY, total_steps=12) as logger:
        for step in range(1, 13):
            logger.log(step, {"val/score": step / 20}, kind="val")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "charts")]) == 0
    out, err = capsys.readouterr()
    assert [Path(p).name for p in out.split()] == ["overview.png", "validation.png"]
    assert all(Path(p).parent == tmp_path / "charts" and os.path.getsize(p) > 10_000 for p in out.split())
    assert "skipped rewards.png: no data for" in err


def test_cli_errors_clearly_without_metrics(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prorl plot: error: no metrics.jsonl in") and str(tmp_path) in err and err.count("\n") == 1


def test_plotting_a_run_does_not_import_torch():
    """`prorl plot` reads JSON lines: torch's import (seconds) has no business there."""
    code = "import sys, megatron_prorl.train.plot; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)



def _run_with_missing_domains(run_dir: Path) -> None:
    """A two-domain run whose steps draw no logic prompt every third step (reward/logic and
    accuracy/logic null there), one real divergence (kl null at step 7), and the events a run
    has: a stage with its long settings text, a reset, a config change on resume, a second
    stage with its reset."""
    rng = np.random.default_rng(1)
    with MetricsLogger(run_dir, FILES_ONLY, total_steps=60) as logger:
        logger.log(0, {"val/score": 0.2, "val/pass@1/math": 0.3, "val/pass@1/logic": 0.1}, kind="val")
        logger.log_event(1, "stage 8k: n=16 T=1.2 max_response_length=8192 kl_beta=0.001", category="stage")
        for s in range(1, 61):
            logic = float("nan") if s % 3 == 0 else 0.2 + rng.normal(0, 0.05)  # written as null
            logger.log(s, {"reward/mean": 0.4, "reward/math": 0.5 + rng.normal(0, 0.05), "reward/logic": logic,
                           "accuracy/math": 0.5, "accuracy/logic": logic, "kl": float("nan") if s == 7 else 0.01,
                           "entropy": 0.5, "response_length/mean": 10, "response_length/max": 12,
                           **{f"time/{t}": 0.1 * (i + 1) for i, t in enumerate(
                               ("generation", "reward", "sleep", "reference", "training", "release", "wake", "sync"))},
                           "time/step": 4.0, "tokens_per_s": 1000.0})
            if s == 30:
                logger.log_event(s, "reference reset: validation stalled for 3 validations", category="reset")
            if s == 40:
                logger.log_event(s, "config changed on resume: optim.lr 0.0003 -> 0.001", category="config")
            if s == 45:
                logger.log_event(s, "stage 16k: n=16 T=1.2 max_response_length=16384 kl_beta=0.001",
                                 category="stage")
                logger.log_event(s, "reference reset: stage 16k starts", category="reset")
            if s % 20 == 0:
                logger.log(s, {"val/score": 0.3, "val/pass@1/math": 0.4, "val/pass@1/logic": 0.2}, kind="val")


def test_each_chart_from_a_run_with_missing_domains(tmp_path, monkeypatch):
    """Every chart drawn, then read back from its figure after layout: a step without a
    domain's prompts is a gap, not a NaN marker (the real NaN of kl is one); the time areas
    have eight different colours; event labels are their kind in full; every text and legend
    lies inside the figure, and no legend covers a label."""
    import contextlib

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection

    from megatron_prorl.train import plot as plot_module

    _run_with_missing_domains(tmp_path)
    figures = {}
    real = plot_module.figure

    @contextlib.contextmanager
    def keep(path, size):
        with real(path, size) as fig:
            yield fig
        figures[Path(path).stem] = fig

    monkeypatch.setattr(plot_module, "figure", keep)
    written = plot_run(tmp_path)
    assert sorted(figures) == sorted(p.stem for p in written) == sorted(
        ["overview", "rewards", "validation", "entropy_kl", "length", "timing"])
    for name, fig in figures.items():
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)  # the layout, as savefig ran it
        inside = fig.bbox.padded(1)
        for ax in fig.axes:
            markers = [line.get_label() for line in ax.lines if line.get_label().endswith("(NaN/inf)")]
            assert markers in ([], ["kl (NaN/inf)"]), (name, ax.get_title(), markers)
            labels = [t for t in ax.texts if t.get_text().strip()]
            if ax.get_visible() and ax.get_subplotspec().rowspan.start == 0:  # the top row is labelled
                assert [t.get_text().strip() for t in labels] == [
                    "stage 8k", "reference reset", "config changed on resume", "stage 16k / reference reset"], name
            for text in labels:
                box = text.get_window_extent(renderer)
                assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), (name, text.get_text())
            legend = ax.get_legend()
            if legend is not None:
                box = legend.get_window_extent(renderer)
                assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), (name, ax.get_title())
                assert not any(box.overlaps(t.get_window_extent(renderer)) for t in labels), (name, ax.get_title())
            if ax.get_title() == "Time per step":
                colors = [tuple(c.get_facecolor()[0]) for c in ax.collections if isinstance(c, PolyCollection)]
                assert len(colors) == 8 and len(set(colors)) == 8, colors
        assert any(ax.get_title() == "KL to reference" for ax in fig.axes) == (name in ("overview", "entropy_kl"))
