"""The ProRL study (experiments/prorl_tiny) end to end at its smoke budget: killed mid-way, rerun,
it finishes without redoing finished units and writes the report with every section and one
verdict per claim; and its verdict rules on hand-made numbers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from experiments.prorl_tiny import report as rep
from experiments.prorl_tiny.runner import Runner, is_done, log_file, marker
from experiments.prorl_tiny.study import BUDGETS, Unit, plan

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## Summary", "## Setup", "## Claim 1:", "## Claim 2:", "## Claim 3:", "## Claim 4:", "## Regimes",
            "## Creativity Index", "## Budget", "## How to rerun", "## Verdict rules")
VERDICT = re.compile(r"^\*\*Verdict \(claim (\d)\): (reproduced|not reproduced|mixed)\*\*", re.M)


def study(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "experiments.prorl_tiny", *args, "--budget", "smoke",
                             "--out", str(out), "--jobs", "2", "--progress-every", "5"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def processes_in(directory: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if Path(p.cwd()) == directory:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_smoke_study_survives_a_kill_and_writes_the_report(tmp_path):
    out = tmp_path / "study"
    first = study(out, "run")
    # Kill the runner (SIGKILL: no handler runs) once one training run is finished and the
    # next has written a checkpoint: its units must die with it, and a rerun must resume.
    wait_for(lambda: (out / "study.json").is_file() or first.poll() is not None, 60, "the study to start")
    meanwhile = study(out, "run")  # a second runner on the same study is refused
    assert meanwhile.communicate(timeout=60)[0].strip().endswith("wait for it or stop it first")
    assert meanwhile.returncode == 2
    units = plan(BUDGETS["smoke"])
    train = {u.name.split("/")[1]: u for u in units if u.kind == "train"}
    wait_for(lambda: marker(out, train["full-s42"]).is_file() or first.poll() is not None, 400, "a finished run")

    def checkpointed_but_running() -> bool:
        return any(not marker(out, train[d.parents[1].name]).exists()
                   for d in out.glob("train/*/checkpoints/step_00000002"))

    wait_for(lambda: checkpointed_but_running() or first.poll() is not None, 300, "a checkpoint of a running unit")
    assert first.poll() is None, first.communicate()[0]
    first.kill()
    log = first.communicate()[0]
    assert "start train/full-s42" in log and "done train/full-s42" in log, log
    wait_for(lambda: not processes_in(out), 30, "the killed runner's units to die")

    finished = {u.name: marker(out, u).stat().st_mtime_ns for u in units if marker(out, u).is_file()}
    interrupted = [u for u in train.values() if u.name not in finished
                   and (out / u.out / "checkpoints" / "step_00000002").is_dir()]
    assert interrupted, sorted(finished)
    second = study(out, "run")
    log = second.communicate(timeout=600)[0]
    assert second.returncode == 0, log[-4000:]
    assert f"skipping {len(finished)} finished unit(s)" in log, log
    for name in finished:  # finished units were not run again
        assert f"start {name} " not in log
    assert {u.name: marker(out, u).stat().st_mtime_ns for u in units if u.name in finished} == finished
    assert all(marker(out, u).is_file() for u in units)
    for unit in interrupted:  # resumed from its checkpoint, every step recorded once in the end
        text = log_file(out, unit).read_text()
        attempts = text.split("\n=== ")[1:]  # one per start of the unit
        assert len(attempts) >= 2 and "resumed from" in attempts[-1], text[-3000:]
        steps = [r["step"] for r in map(json.loads, (out / unit.out / "metrics.jsonl").read_text().splitlines())
                 if r["kind"] == "train"]
        assert steps == list(range(1, unit.expect + 1))

    path = out / "report" / "study-prorl-tiny.md"
    text = path.read_text()
    positions = [text.find(s) for s in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert [c for c, _ in VERDICT.findall(text)] == ["1", "2", "3", "4"]
    assert "SMOKE RUN" in text and ".venv/bin/python -m experiments.prorl_tiny run --budget smoke" in text
    for png in re.findall(r"\]\((study-prorl-tiny/\w+\.png)\)", text):
        assert (path.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert len(set(re.findall(r"\]\((study-prorl-tiny/\w+\.png)\)", text))) == 5

    # `report` rewrites the same document from the results alone; another budget is refused.
    path.unlink()
    again = study(out, "report")
    assert again.communicate(timeout=120)[0] and again.returncode == 0
    assert path.read_text() == text
    other = subprocess.run([sys.executable, "-m", "experiments.prorl_tiny", "run", "--out", str(out)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and other.stderr.strip().count("\n") == 0
    assert "holds a study with --budget smoke" in other.stderr


def _metrics(p1: float, pk: float) -> dict:
    return {"pass@k": {"1": p1, "128": pk}}


def test_verdict_rules_on_hand_made_numbers():
    b = BUDGETS["full"]
    names = ["heldout.jsonl[math]", "arithmetic:add?low=100&high=999", "arithmetic:sub"]
    base = {names[0]: _metrics(0.4, 1.0), names[1]: _metrics(0.0, 0.1), names[2]: _metrics(0.0, 0.0)}
    grown = {names[0]: _metrics(0.7, 0.95), names[1]: _metrics(0.05, 0.3), names[2]: _metrics(0.01, 0.2)}
    same = {n: dict(m) for n, m in base.items()}
    evals = {"base": base, "full-s1": grown, "full-s2": grown}
    assert rep.claim2(b, evals, ["full-s1", "full-s2"]).verdict == "reproduced"
    assert rep.claim3(b, evals, ["full-s1", "full-s2"]).verdict == "reproduced"
    evals["full-s2"] = same  # one seed without the gains: "every seed" fails
    assert rep.claim2(b, evals, ["full-s1", "full-s2"]).verdict == "not reproduced"
    assert rep.claim3(b, evals, ["full-s1", "full-s2"]).verdict == "not reproduced"
    sharpened_only = {names[0]: _metrics(0.7, 0.95), names[1]: _metrics(0.0, 0.1), names[2]: _metrics(0.0, 0.0)}
    evals["full-s2"] = evals["full-s1"] = sharpened_only
    assert rep.claim2(b, evals, ["full-s1", "full-s2"]).verdict == "mixed"

    creativity = {"mean": {"base": 0.2, "full-s1": 0.25, "full-s2": 0.205}, "min_ngram": 3, "max_ngram": 5,
                  "corpus_words": 10}
    assert rep.claim4(creativity, ["full-s1"]).verdict == "reproduced"
    assert rep.claim4(creativity, ["full-s1", "full-s2"]).verdict == "mixed"
    assert rep.claim4(creativity, ["full-s2"]).verdict == "not reproduced"


def _training(name: str, scores: list[float], entropy_end: float, steps: int = 500) -> rep.Training:
    val_steps = list(range(0, steps + 1, 20))
    curve = [scores[0] + (scores[1] - scores[0]) * s / steps for s in val_steps]
    entropy = [0.25] * (steps // 2) + [entropy_end] * (steps - steps // 2)
    return rep.Training(name, list(range(1, steps + 1)), entropy, [0.0] * steps, [0.0] * steps, val_steps, curve, [])


def test_claim1_needs_the_full_recipe_to_keep_improving_and_an_ablation_to_fall_behind():
    b = BUDGETS["full"]
    runs = {"full-s42": _training("full-s42", [0.3, 0.8], 0.2), "no-kl": _training("no-kl", [0.3, 0.5], 0.2),
            "no-reset": _training("no-reset", [0.3, 0.8], 0.01), "no-ds": _training("no-ds", [0.3, 0.8], 0.2),
            "short": _training("short", [0.3, 0.4], 0.2, steps=120)}
    assert rep.claim1(b, runs).verdict == "reproduced"  # no-kl stalls, no-reset's entropy collapses
    runs["no-reset"] = _training("no-reset", [0.3, 0.8], 0.2)
    assert rep.claim1(b, runs).verdict == "mixed"
    runs["no-kl"] = _training("no-kl", [0.3, 0.8], 0.2)
    assert rep.claim1(b, runs).verdict == "not reproduced"


def test_spearman_ranks_ties_and_constant_sides():
    assert rep.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert rep.spearman([0, 0, 1], [1, 1, 0]) == pytest.approx(-1)
    assert rep.spearman([1, 2, 3], [0, 0, 0]) == 0.0
    assert rep.ranks([5, 1, 5, 0]) == [3.5, 2, 3.5, 1]


def _unit(name: str, code: str, deps: tuple[str, ...] = ()) -> Unit:
    return Unit(name, ("python", "-c", code), deps, cost=1.0)


def test_runner_retries_a_failed_unit_once_skips_finished_ones_and_blocks_what_needs_a_failure(tmp_path):
    flaky = "import pathlib, sys; p = pathlib.Path('seen'); seen = p.exists(); p.touch(); sys.exit(0 if seen else 3)"
    units = [_unit("a/ok", "print('ok')"), _unit("a/flaky", flaky), _unit("a/bad", "import sys; sys.exit(5)"),
             _unit("b/after-bad", "print('never')", ("a/bad",)), _unit("b/after-ok", "print(1)", ("a/ok", "a/flaky"))]
    said: list[str] = []
    assert Runner(tmp_path, units, jobs=2, say=said.append).run() == 1
    text = "\n".join(said)
    assert "FAILED a/flaky: exit code 3; starting it once more" in text
    assert "FAILED a/bad: exit code 5; starting it once more" in text and "FAILED a/bad: exit code 5; its log" in text
    assert "1 unit(s) failed: a/bad; not run (they need those): b/after-bad" in text
    assert [u.name for u in units if is_done(tmp_path, u)] == ["a/ok", "a/flaky", "b/after-ok"]
    assert log_file(tmp_path, units[1]).read_text().count("\n=== ") == 2
    assert not log_file(tmp_path, units[3]).exists()

    said.clear()  # a rerun starts only what is not done; a changed command is not done
    units[0] = _unit("a/ok", "print('changed')")
    assert Runner(tmp_path, units[:2] + units[4:], jobs=1, say=said.append).run() == 0
    assert said[0] == "skipping 2 finished unit(s): a/flaky, b/after-ok"
    assert [s.split()[2] for s in said if " start " in s] == ["a/ok"]


def test_runner_stops_its_units_on_sigterm(tmp_path):
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path;"
              "from experiments.prorl_tiny.runner import Runner; from experiments.prorl_tiny.study import Unit;"
              "u = Unit('a/sleep', ('python', '-c', 'import time; open(\"started\", \"w\"); time.sleep(60)'), (), 1.0);"
              f"sys.exit(Runner(Path({str(tmp_path)!r}), [u], 1).run())")
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "started").exists(), 60, "the unit to start")
    children = processes_in(tmp_path)
    runner.send_signal(signal.SIGTERM)
    out = runner.communicate(timeout=60)[0]
    assert runner.returncode == 128 + signal.SIGTERM, out
    assert "signal SIGTERM: stopping 1 running unit(s)" in out and "stopped a/sleep" in out
    assert children and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)
    assert not marker(tmp_path, Unit("a/sleep", (), (), 1.0)).exists()
