"""`prorl eval compare` on evaluations built from constructed samples: regimes, tables, plot."""

from __future__ import annotations

import json

import pytest

from megatron_prorl.cli import main as prorl_main
from megatron_prorl.eval.cli import main as eval_main
from megatron_prorl.eval.report import RESULTS_FILE, compute_results


def records(source: str, domain: str, correct_counts: list[int], n: int = 8) -> list[dict]:
    return [{"source": source, "chunk": 0, "problem": p, "problem_id": str(p), "domain": domain, "sample": s,
             "score": float(s < c), "reason": "", "answer": "1" if s < c else "2", "finish_reason": "eos",
             "length": 10, "response": "x"}
            for p, c in enumerate(correct_counts) for s in range(n)]


def write_eval(directory, counts_by_source: dict) -> None:
    directory.mkdir()
    recs = [r for (source, domain), counts in counts_by_source.items() for r in records(source, domain, counts)]
    (directory / RESULTS_FILE).write_text(json.dumps(compute_results(recs, [1, 8])))


@pytest.fixture
def checkpoints(tmp_path):
    """Three evaluations over training: aime narrows (more correct on solved problems, fewer
    problems solved at all), code keeps widening, logic gains then stays."""
    dirs = [tmp_path / name for name in ("base", "step500", "step1000")]
    write_eval(dirs[0], {("aime", "math"): [2, 2, 2, 2], ("code", "code"): [0, 0, 0, 1], ("rg", "logic"): [0, 0, 0, 0]})
    write_eval(dirs[1], {("aime", "math"): [6, 6, 4, 0], ("code", "code"): [1, 0, 0, 1], ("rg", "logic"): [4, 4, 0, 0]})
    write_eval(dirs[2], {("aime", "math"): [8, 8, 6, 0], ("code", "code"): [1, 1, 1, 1], ("rg", "logic"): [4, 4, 0, 0]})
    return dirs


def test_regimes_tables_and_plot(checkpoints, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert eval_main(["compare", *map(str, checkpoints), "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["runs"] == ["base", "step500", "step1000"]
    regimes = {name: row["regime"] for name, row in result["benchmarks"].items()}
    assert regimes == {"aime": "diminishing", "code": "sustained", "rg": "plateau"}
    assert result["benchmarks"]["aime"]["k"] == 8
    text = (out / "compare.md").read_text()
    assert "| base | 25.00 |" in text  # aime pass@1 of the base: 8 of 32
    assert "| aime | 25.00 -> 68.75 (+43.75) | 100.00 -> 75.00 (-25.00) | 8 | diminishing |" in text
    printed = capsys.readouterr().out
    assert "1. diminishing" in text and "1. diminishing" in printed
    assert printed.strip().splitlines()[-1] == f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}"
    assert (out / "compare.png").stat().st_size > 10_000


def test_threshold_flag_and_bad_inputs(checkpoints, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert prorl_main(["eval", "compare", *map(str, checkpoints), "--out", str(out), "--min-change", "0.5"]) == 0
    assert json.loads((out / "compare.json").read_text())["benchmarks"]["code"]["regime"] == "sustained"
    assert json.loads((out / "compare.json").read_text())["benchmarks"]["aime"]["regime"] == "no change"
    for argv, message in ((["compare", str(checkpoints[0])], "at least two results directories"),
                          (["compare", str(checkpoints[0]), str(tmp_path / "none")], "no results"),
                          (["compare", *map(str, checkpoints), "--k", "16"], "--k 16: not evaluated")):
        assert eval_main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
