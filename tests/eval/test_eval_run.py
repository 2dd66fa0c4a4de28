"""`prorl eval` end to end on CPU: the shipped tiny model on its held-out set and a Reasoning
Gym task; results recomputed from samples.jsonl; resume after an interruption; a training
checkpoint evaluated through on-the-fly conversion; bad inputs."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from megatron_prorl.eval.cli import main as eval_main
from megatron_prorl.eval.report import compute_results, load_results
from megatron_prorl.eval.run import read_samples

RG = "reasoning_gym:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"
ARGS = ["--samples", "4", "--k", "1,2,4", "--max-new-tokens", "24", "--limit", "6", "--size", "6",
        "--chunk-problems", "4", "--reward-workers", "1", "--quiet"]


def run(model: str, data: list[str], out, *extra: str) -> int:
    return eval_main(["--model", model, "--data", *data, "--out", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "tiny"
    assert run("builtin:tiny", ["builtin:tiny/heldout.jsonl", RG], out) == 0
    return out


def test_outputs_and_results_recomputable(tiny_eval):
    records = read_samples(tiny_eval / "samples.jsonl", text=True)
    assert len(records) == 2 * 6 * 4
    assert all("\\boxed{" in r["response"] for r in records if r["answer"] and r["domain"] == "math")
    results = load_results(tiny_eval)
    assert compute_results(records, [1, 2, 4], results["settings"]) == results
    for r in records:  # the verifier's verdict agrees with the arithmetic
        if r["source"] == "heldout.jsonl":
            a, b = map(int, re.match(r"add-(\d+)-(\d+)", r["problem_id"]).groups())
            assert (r["score"] == 1.0) == (r["answer"] == str(a + b)), r
    for label in ("heldout.jsonl", RG):
        mine = [r for r in records if r["source"] == label]
        entry = results["sources"][label]
        assert entry["problems"] == 6 and entry["samples"] == 24
        assert entry["pass@k"]["1"] == pytest.approx(sum(r["score"] == 1.0 for r in mine) / 24)
        solved = {r["problem"] for r in mine if r["score"] == 1.0}
        assert entry["pass@k"]["4"] == pytest.approx(len(solved) / 6)  # k = n: any correct sample
        assert entry["mean_length"] == pytest.approx(sum(r["length"] for r in mine) / 24)
    heldout = results["sources"]["heldout.jsonl"]
    assert heldout["domain"] == "math" and "majority@k" in heldout
    assert results["sources"][RG]["headline"] == results["sources"][RG]["mean_score"]  # logic: mean reward
    assert 0 < results["domains"]["math"]["pass@k"]["1"] < 1  # the tiny model is only partly competent
    summary = (tiny_eval / "summary.md").read_text()
    assert "### Math (pass@1, %)" in summary and "### Logic puzzles (mean reward, %)" in summary
    assert (tiny_eval / "pass_at_k.png").stat().st_size > 10_000


def test_resume_after_interruption_gives_same_results(tiny_eval, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(tiny_eval, resumed)
    for name in ("results.json", "summary.md", "pass_at_k.png"):
        (resumed / name).unlink()
    lines = (tiny_eval / "samples.jsonl").read_text().splitlines(keepends=True)
    # killed while writing: chunk 0 of the first source whole, part of chunk 1, half a line
    (resumed / "samples.jsonl").write_text("".join(lines[:16 + 5]) + lines[21][:40])
    assert run("builtin:tiny", ["builtin:tiny/heldout.jsonl", RG], resumed) == 0
    assert sorted((resumed / "samples.jsonl").read_text().splitlines()) == sorted(l.rstrip("\n") for l in lines)
    assert load_results(resumed) == load_results(tiny_eval)
    # a finished evaluation reruns without sampling: only the report is recomputed, with new ks
    assert run("builtin:tiny", ["builtin:tiny/heldout.jsonl", RG], resumed, "--k", "1,4") == 0
    assert load_results(resumed)["ks"] == [1, 4]


def test_training_checkpoint_is_converted_on_the_fly(tiny_eval, tmp_path, capsys):
    from checkpoint_convert import hf_to_megatron
    from megatron_prorl.builtin import resolve

    step = tmp_path / "run" / "checkpoints" / "step_00000003"
    hf_to_megatron(resolve("builtin:tiny"), step, progress=False)
    (step / "trainer_state.json").write_text("{}")
    (step.parent / "latest").write_text(step.name + "\n")
    out = tmp_path / "ckpt_eval"
    assert run(str(tmp_path / "run"), ["builtin:tiny/heldout.jsonl"], out, "--limit", "4") == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--model")]
    assert said == [f"--model {tmp_path / 'run'}: checkpoint {step} (the run's latest checkpoint), converting it to "
                    "Hugging Face format ..."]  # once
    assert not list(out.glob("converted-*"))  # the converted copy is removed
    mine = read_samples(out / "samples.jsonl", text=True)
    base = [r for r in read_samples(tiny_eval / "samples.jsonl", text=True)
            if r["source"] == "heldout.jsonl" and r["chunk"] == 0]
    assert mine == base  # same weights, same seeds: the same responses


def test_bad_inputs_are_one_clear_line(tiny_eval, tmp_path, capsys):
    cases = [
        (["--model", str(tmp_path / "missing"), "--data", "builtin:tiny/heldout.jsonl"], "no such directory"),
        (["--model", str(tmp_path), "--data", "builtin:tiny/heldout.jsonl"], "not a Hugging Face directory"),
        (["--model", "builtin:tiny", "--data", "reasoning_gym:nope"], "reasoning_gym:nope: unknown task"),
        (["--model", "builtin:tiny", "--data", str(tmp_path / "x.jsonl")], "data file not found"),
        (["--model", "builtin:tiny", "--data", "builtin:tiny/heldout.jsonl", "--k", "1,8"], "--k 8 > --samples 4"),
        (["--model", "builtin:tiny", "--data", "builtin:tiny/heldout.jsonl", "--top-p", "0"], "--top-p=0.0"),
        (["--model", "builtin:tinyy", "--data", "builtin:tiny/heldout.jsonl"], "no built-in model 'tinyy' (known: tiny)"),
    ]
    for argv, message in cases:
        assert eval_main([*argv, "--out", str(tmp_path / "o"), *ARGS[:2], "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("prorl eval: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "o" / "eval_config.json").exists()
    # resuming with other settings names what changed
    assert eval_main(["--model", "builtin:tiny", "--data", "builtin:tiny/heldout.jsonl", RG, "--out", str(tiny_eval),
                      *ARGS, "--temperature", "1.0"]) == 2
    assert "temperature: 0.6 -> 1.0" in capsys.readouterr().err


def test_cut_writes_are_dropped_or_completed(tmp_path):
    """What an interruption can leave: a chunk cut short, a record without its newline."""
    from megatron_prorl.data import Row
    from megatron_prorl.eval.run import EvalSettings, _complete_chunks
    from megatron_prorl.eval.sources import EvalSource

    settings = EvalSettings(model="m", data=("a",), samples=2, chunk_problems=2)
    source = EvalSource("a", "a", [Row("p", "math", "1")] * 3)  # chunks of 2 and 1 problems

    def line(chunk: int, problem: int, sample: int) -> str:
        return json.dumps({"source": "a", "chunk": chunk, "problem": problem, "sample": sample, "response": "x"})

    path = tmp_path / "samples.jsonl"
    complete = [line(0, p, s) for p in (0, 1) for s in (0, 1)]
    path.write_text("\n".join(complete + [line(1, 2, 0)]))  # chunk 1 short, and no final newline
    assert len(_complete_chunks(path, [source], settings)) == 4
    assert path.read_text() == "\n".join(complete) + "\n"
    path.write_text("\n".join(complete + [line(1, 2, 0), line(1, 2, 1)]))  # whole, newline lost
    records = _complete_chunks(path, [source], settings)
    assert len(records) == 6 and "response" not in records[0]
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 6


@pytest.mark.parametrize("field, flag, key, value", [
    ("samples", "--samples", "n", 0),
    ("temperature", "--temperature", "temperature", 0.0),
    ("top_p", "--top-p", "top_p", 1.5),
    ("max_new_tokens", "--max-new-tokens", "max_response_length", 0),
])
def test_sampling_settings_are_checked_as_training_checks_them(field, flag, key, value):
    """One rule for sampling (rollout's check_sampling): eval's flags get training's messages."""
    from megatron_prorl.config import ConfigError, RolloutConfig
    from megatron_prorl.eval.run import EvalSettings
    from megatron_prorl.rollout.base import check_config

    with pytest.raises(ValueError) as in_eval:
        EvalSettings(model="m", data=("a",), **{field: value}).check()
    with pytest.raises(ConfigError) as in_training:
        check_config(RolloutConfig(**{key: value}))
    assert str(in_eval.value).startswith(f"{flag}={value}: must be ")
    assert str(in_eval.value) == str(in_training.value).replace(f"rollout.{key}", flag)


def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path):
    """SIGINT to the process group of a real `prorl eval` (a terminal's Ctrl-C) once a chunk is
    written: one line, exit code 130, no process left; the same command finishes the rest."""
    import psutil
    from helpers.runs import ctrl_c, prorl, wait_for

    out = tmp_path / "eval"
    argv = ["eval", "--model", "builtin:tiny", "--data", "builtin:tiny/heldout.jsonl", "--out", out,
            *ARGS[:ARGS.index("--limit")], "--limit", "40", "--chunk-problems", "4", "--reward-workers", "1", "--quiet"]
    proc = prorl(*argv)
    wait_for(lambda: (out / "samples.jsonl").exists() and (out / "samples.jsonl").stat().st_size, proc,
             what="the first chunk")
    processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    ctrl_c(proc, "prorl eval: interrupted; the finished chunks are kept in --out's samples.jsonl and the same "
                 "command resumes")
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive
    kept = len(read_samples(out / "samples.jsonl"))
    assert 0 < kept < 40 * 4
    proc = prorl(*argv)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text[-3000:]
    assert len(read_samples(out / "samples.jsonl")) == 40 * 4
