"""`prorl eval` under the faults and mistakes training already survives (issue 20, items 8-11):
an incomplete model directory refused as training refuses it, output paths that are files,
an unknown format prefix, a full disk, and two evaluations on one --out."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from helpers.runs import prorl, prorl_fails, wait_for

from megatron_prorl.eval.cli import main as eval_main
from megatron_prorl.eval.run import read_samples

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HELDOUT = "builtin:tiny/heldout.jsonl"
# 6 problems x 4 samples in chunks of 4 problems: 16 lines, then 8.
ARGS = ["--samples", "4", "--k", "1,4", "--max-new-tokens", "24", "--limit", "6", "--chunk-problems", "4",
        "--reward-workers", "1", "--quiet"]


def eval_fails(*args, timeout=120) -> str:
    return prorl_fails("eval", *args, timeout=timeout, command="prorl eval")


def test_an_incomplete_model_config_is_refused_before_anything_is_built(tmp_path):
    """{"model_type": "qwen2"} alone: transformers' defaults would fill in a ~12B model."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    started = time.monotonic()
    line = eval_fails("--model", model, "--data", HELDOUT, "--out", tmp_path / "out", *ARGS, timeout=60)
    assert line == f"prorl eval: error: {model / 'config.json'}: missing field 'num_attention_heads'", line
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()
    # the same words as training (prorl train) for the same directory
    from checkpoint_convert.arch import load_arch
    from checkpoint_convert.errors import ConversionError

    with pytest.raises(ConversionError) as training:
        load_arch(model)
    assert line.endswith(str(training.value))


def test_output_paths_that_are_files(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file\n")
    line = eval_fails("--model", "builtin:tiny", "--data", HELDOUT, "--out", blocker, *ARGS)
    assert line == f"prorl eval: error: --out={blocker}: {blocker} is a file, not a directory", line
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "doc.txt").write_text("the quick brown fox jumps over the lazy dog\n")
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"text": "the quick brown fox jumps over the lazy cat"}) + "\n")
    line = eval_fails("creativity", "--corpus", corpus, "--responses", responses, "--out", blocker / "sub", "--quiet")
    assert line == f"prorl eval: error: --out={blocker / 'sub'}: {blocker} is a file, not a directory", line
    assert not (tmp_path / "corpus.cindex").exists()  # refused before the index is built


def test_an_unknown_format_prefix_lists_the_known_formats(tmp_path):
    data = tmp_path / "aime.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    line = eval_fails("--model", "builtin:tiny", "--data", f"foo={data}", "--out", tmp_path / "out", *ARGS)
    assert f"data source 'foo={data}': unknown format 'foo' (known: " in line and "math, " in line, line
    assert "not found" not in line


def test_an_existing_file_whose_name_holds_an_equals_sign_is_a_path(tmp_path, monkeypatch):
    from megatron_prorl.eval.sources import source_config

    monkeypatch.chdir(tmp_path)
    Path("foo=bar.jsonl").write_text("")
    assert source_config("foo=bar.jsonl", 10).path == "foo=bar.jsonl"
    assert source_config("math=bar.jsonl", 10).format == "math"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted evaluation with ARGS: what every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("eval") / "reference"
    assert eval_main(["--model", "builtin:tiny", "--data", HELDOUT, "--out", str(out), *ARGS]) == 0
    return out


def test_a_full_disk_is_one_line_and_samples_keep_whole_lines(reference, tmpfs, capsys):
    """The disk fills up in the middle of the second chunk's lines: one line naming the
    directory, samples.jsonl holds exactly the first chunk (no partial line), and once there is
    room the same command finishes with the results of an uninterrupted run."""
    lines = (reference / "samples.jsonl").read_bytes().splitlines(keepends=True)
    first_chunk = b"".join(lines[:16])
    page = os.sysconf("SC_PAGE_SIZE")
    pages = -(-len(first_chunk) // page)  # samples.jsonl's room: the first chunk, part of the second
    assert len(first_chunk) < pages * page < sum(map(len, lines)), "the second chunk must not fit"
    disk = tmpfs("1m")
    st = os.statvfs(disk)
    room = (2 + pages) * page  # .prorl.lock and eval_config.json take a page each
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - room))
    out = disk / "out"
    argv = ["--model", "builtin:tiny", "--data", HELDOUT, "--out", str(out), *ARGS]
    capsys.readouterr()
    assert eval_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"prorl eval: error: {out}: no space left on device; samples.jsonl keeps every chunk finished "
                   "before: free space and rerun the same command to resume"), err
    assert (out / "samples.jsonl").read_bytes() == first_chunk
    (disk / "filler").unlink()
    assert eval_main(argv) == 0
    assert sorted((out / "samples.jsonl").read_bytes().splitlines()) == sorted(l.rstrip(b"\n") for l in lines)
    assert json.loads((out / "results.json").read_text()) == json.loads((reference / "results.json").read_text())


def test_a_second_evaluation_into_one_out_is_refused_and_a_dead_ones_lock_taken_over(reference, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "--model", "builtin:tiny", "--data", HELDOUT, "--out", out, *ARGS]
    first = prorl(*args)
    lock = out / ".prorl.lock"
    try:
        wait_for(lambda: lock.exists() and lock.read_text().strip(), first, timeout=300, what="the first one's lock")
        os.killpg(first.pid, signal.SIGSTOP)  # held still while it holds the lock: no race with its end
        started = time.monotonic()
        line = prorl_fails(*args, timeout=120, command="prorl eval")
        assert time.monotonic() - started < 60  # at once: no model built, nothing sampled
        assert f"{out} is in use by pid {first.pid} on host {socket.gethostname()}" in line, line
        assert line.endswith("stop that run or set another --out"), line
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    proc = prorl(*args)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert f"taking over the lock of pid {first.pid} on host {socket.gethostname()}" in output, output[-3000:]
    assert read_samples(out / "samples.jsonl") == read_samples(reference / "samples.jsonl")


def test_an_incomplete_chunk_before_a_complete_one_is_rewritten_out(tmp_path):
    """Not what an interruption leaves (that is the end of the file, cut off in place), but
    samples.jsonl files can be joined by hand: the file is rewritten without the short chunk."""
    from megatron_prorl.data import Row
    from megatron_prorl.eval.run import EvalSettings, _complete_chunks
    from megatron_prorl.eval.sources import EvalSource

    settings = EvalSettings(model="m", data=("a",), samples=2, chunk_problems=1)
    source = EvalSource("a", "a", [Row("p", "math", "1")] * 2)

    def line(chunk: int, sample: int) -> str:
        return json.dumps({"source": "a", "chunk": chunk, "problem": chunk, "sample": sample, "response": "x"}) + "\n"

    path = tmp_path / "samples.jsonl"
    path.write_text(line(0, 0) + line(1, 0) + line(1, 1))
    assert [(r["chunk"], r["sample"]) for r in _complete_chunks(path, [source], settings)] == [(1, 0), (1, 1)]
    assert path.read_text() == line(1, 0) + line(1, 1)
