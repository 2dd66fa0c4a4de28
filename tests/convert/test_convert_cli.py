"""The prorl-convert command: a real end-to-end run, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from convert_jobs import read_hf_tensors
from convert_models import write_variant

from checkpoint_convert.checkpoint import HF_FILES
from megatron_prorl.convert_cli import main

SUMMARY = re.compile(r"\d+ tensors, \d+\.\d+ GB in \d+\.\d+ s \(\d+\.\d+ GB/s\) -> ")


def prorl_convert(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("prorl-convert")  # the installed console script
    command = [str(script)] if script.exists() else [sys.executable, "-m", "megatron_prorl.convert_cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=300, env=env)


def test_end_to_end(hf_dirs, distributed, tmp_path):
    src = hf_dirs["llama"]  # bf16, sharded, rope scaling
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"

    run = prorl_convert("hf-to-megatron", "--hf-dir", str(src), "--out", str(ckpt), "--tp", "2", "--pp", "2")
    assert run.returncode == 0, run.stderr
    assert SUMMARY.search(run.stdout) and "TP2 x PP2" in run.stdout

    # verify runs at TP1 x PP1: dist_checkpointing reshards the TP2 x PP2 checkpoint.
    run = prorl_convert("verify", "--hf-dir", str(src), "--ckpt", str(ckpt), "--tolerance", "1e-4")
    assert run.returncode == 0, run.stderr
    assert re.search(r"max \|logit diff\| = \S+ \(tolerance 1\.0e-04\): OK", run.stdout)

    other = write_variant(tmp_path / "other", "llama", seed=1)  # same config, other weights
    run = prorl_convert("verify", "--hf-dir", str(other), "--ckpt", str(ckpt))
    assert run.returncode == 1 and "FAIL" in run.stdout, run.stdout + run.stderr

    # The way back from a checkpoint the live model saved (fp32, TP2 x PP2), cast to the source's bf16.
    _, saved = distributed
    run = prorl_convert("megatron-to-hf", "--ckpt", str(saved), "--out", str(back), "--dtype", "bf16")
    assert run.returncode == 0, run.stderr
    assert SUMMARY.search(run.stdout)
    source, result = read_hf_tensors(src), read_hf_tensors(back)
    assert source.keys() == result.keys()
    assert all(result[n].dtype == t.dtype and (result[n] == t).all() for n, t in source.items())


# case -> what the error message must say
BAD_INPUT = {
    "tp-heads": "tp=3 does not divide num_attention_heads=8",
    "tp-groups": "tp=8 does not divide num_key_value_heads (query groups)=4",
    "pp-layers": "pp=3 does not divide num_hidden_layers=4",
    "no-config": "no config.json",
    "no-weights": "no model.safetensors or model.safetensors.index.json",
    "shape": "has shape (96, 64), config.json implies (128, 64)",
    "family": "model_type='mistral'",
    "rope": "rope_scaling.rope_type='yarn' is not supported",
    "missing-shard": "model-00003-of-00012.safetensors: file not found",
    "truncated": "model.safetensors: truncated",
}
LAYOUT_ARGS = {"tp-heads": ["--tp", "3"], "tp-groups": ["--tp", "8"], "pp-layers": ["--pp", "3"]}


def _edit_config(hf_dir: Path, **fields) -> None:
    path = hf_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def bad_source(case: str, hf_dirs: dict, tmp: Path) -> Path:
    """A HF directory exhibiting ``case`` (a copy of a good one, spoilt)."""
    if case in LAYOUT_ARGS:
        return hf_dirs["qwen2"]
    if case == "no-config":
        return tmp
    src = Path(shutil.copytree(hf_dirs["qwen2-tied" if case == "truncated" else "qwen2"], tmp / "src"))
    if case == "no-weights":
        for f in src.glob("model*.safetensors*"):
            f.unlink()
    elif case == "shape":
        _edit_config(src, intermediate_size=128)
    elif case == "family":
        _edit_config(src, model_type="mistral")
    elif case == "rope":
        _edit_config(src, rope_scaling={"rope_type": "yarn", "factor": 2.0})
    elif case == "missing-shard":
        (src / "model-00003-of-00012.safetensors").unlink()
    elif case == "truncated":
        weights = src / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
    return src


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_hf_to_megatron_bad_input(hf_dirs, tmp_path, capsys, case):
    src, out = bad_source(case, hf_dirs, tmp_path), tmp_path / "out"
    assert main(["hf-to-megatron", "--hf-dir", str(src), "--out", str(out), *LAYOUT_ARGS.get(case, [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prorl-convert: error: ") and BAD_INPUT[case] in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_existing_output_is_not_touched(hf_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs["qwen2"]), "--out", str(out)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert (out / "keep").read_text() == "x"


def test_megatron_to_hf_bad_input(hf_dirs, tmp_path, capsys):
    assert main(["megatron-to-hf", "--ckpt", str(hf_dirs["qwen2"]), "--out", str(tmp_path / "out")]) == 2
    assert "not a checkpoint (no meta.json), nor a run or checkpoints directory" in capsys.readouterr().err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"format": "megatron-prorl", "version": 1, "tp": 1, "pp": 1,
                                                             "dtype": "fp32", "family": "qwen2"}))
    assert main(["megatron-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "no hf/config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_converter_runs_on_its_own(hf_dirs, tmp_path):
    """python -m checkpoint_convert: the conversions without megatron_prorl (nor verify)."""
    code = ("import sys, runpy; sys.modules['megatron_prorl'] = None; "  # any import of it fails
            "sys.argv = ['checkpoint_convert'] + sys.argv[1:]; "
            "runpy.run_module('checkpoint_convert', run_name='__main__')")
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args in (["hf-to-megatron", "--hf-dir", str(hf_dirs["qwen2"]), "--out", str(ckpt), "--tp", "2"],
                 ["megatron-to-hf", "--ckpt", str(ckpt), "--out", str(back)]):
        run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0, run.stderr
        assert SUMMARY.search(run.stdout)
    assert read_hf_tensors(back).keys() == read_hf_tensors(hf_dirs["qwen2"]).keys()
    run = subprocess.run([sys.executable, "-c", code, "verify"], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and "invalid choice: 'verify'" in run.stderr


def _run_layout(tmp_path: Path, ckpt: Path) -> Path:
    """A training run's layout around a copy of ``ckpt``: RUN/checkpoints/step_00000003 + latest."""
    run = tmp_path / "run"
    shutil.copytree(ckpt, run / "checkpoints" / "step_00000003")
    (run / "checkpoints" / "latest").write_text("step_00000003\n")
    return run


def test_megatron_to_hf_takes_a_run_its_checkpoints_its_latest_or_a_step(hf_dirs, tmp_path, caplog):
    """Every path a user would type names the same checkpoint, and the command says which it took.
    The export holds what a Hugging Face model directory holds, with its own model card and
    prompt format, and nothing of the source's other files (its README, data...)."""
    src = Path(shutil.copytree(hf_dirs["qwen2"], tmp_path / "src"))
    (src / "README.md").write_text("a model card")
    (src / "heldout.jsonl").write_text("{}\n")
    ckpt = tmp_path / "ckpt"
    assert main(["hf-to-megatron", "--hf-dir", str(src), "--out", str(ckpt)]) == 0
    assert (ckpt / "manifest.json").is_file()
    model_files = sorted(p.name for p in src.iterdir() if p.name in HF_FILES)
    assert "config.json" in model_files and sorted(p.name for p in (ckpt / "hf").iterdir()) == model_files
    run = _run_layout(tmp_path, ckpt)
    step = run / "checkpoints" / "step_00000003"
    for i, given in enumerate((run, run / "checkpoints", run / "checkpoints" / "latest", step)):
        caplog.clear()
        assert main(["megatron-to-hf", "--ckpt", str(given), "--out", str(tmp_path / f"out{i}")]) == 0
        assert f"checkpoint {step} (" in caplog.text  # the command says which it took
        out = tmp_path / f"out{i}"
        assert sorted(p.name for p in out.iterdir()) == sorted(model_files + ["model.safetensors", "README.md",
                                                                              "prorl_prompt.json"])
        assert (out / "README.md").read_text().startswith("---\n") and "a model card" not in (out / "README.md").read_text()


@pytest.mark.parametrize("damage", ["truncated", "deleted", "flipped"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(hf_dirs, tmp_path, capsys, damage):
    ckpt = tmp_path / "ckpt"
    assert main(["hf-to-megatron", "--hf-dir", str(hf_dirs["qwen2"]), "--out", str(ckpt)]) == 0
    victim = sorted((ckpt / "model").glob("*.distcp"))[0]
    data = victim.read_bytes()
    if damage == "truncated":
        victim.write_bytes(data[:-100])
    elif damage == "deleted":
        victim.unlink()
    else:
        victim.write_bytes(data[:50] + bytes([data[50] ^ 1]) + data[51:])
    capsys.readouterr()
    assert main(["megatron-to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    reason = {"truncated": "truncated or overwritten", "deleted": "missing", "flipped": "checksum mismatch"}[damage]
    assert err.startswith("prorl-convert: error: ") and str(victim) in err and reason in err, err
    assert not (tmp_path / "out").exists()
