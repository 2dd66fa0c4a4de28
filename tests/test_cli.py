"""The `prorl` command's answers to mistakes: one line, ``prorl: error: ...`` naming the file, key,
line or value, exit code 2, and, for what can be checked before, no rank started; ``--debug``
shows the traceback. And one run per output directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers.runs import prorl, prorl_fails, write_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  dtype: fp32\n bad: [1,\n")
    line = prorl_fails("train", config)
    assert f"{config}: not valid YAML" in line and "line 3" in line


@pytest.mark.parametrize("override, message", [
    ("optim.lr=[1,", "override 'optim.lr=[1,': the value is not valid YAML"),
    ("optim.lr=fast", "key 'optim.lr'"),
    ("rollout.temprature=1.0", "key 'rollout.temprature' is not a config key"),
    ("parallel.tensor_model_parallel_size=3", "does not divide num_attention_heads=4"),
    ("trainer.stages=[{name: s, steps: 0}]", "trainer.stages[0] ('s'): steps=0"),
])
def test_bad_overrides_are_one_line_before_any_rank_starts(tmp_path, override, message):
    line = prorl_fails("train", write_config(tmp_path), override)
    assert message in line, line
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_data_file_without_usable_rows_is_one_line_from_a_rank(tmp_path):
    """Found while loading data, inside the ranks (TP2: two spawned processes): still one line."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "no answer here", "domain": "math"}\n')
    line = prorl_fails("train", write_config(tmp_path, data__train=[{"path": str(rows)}]),
                       "parallel.tensor_model_parallel_size=2")
    assert f"{rows}: no usable rows" in line, line


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megatron_prorl.cli", "train", str(write_config(tmp_path)),
                           "optim.lr=fast", "--debug"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_a_second_run_on_the_same_directory_is_refused_at_once(tmp_path):
    config = write_config(tmp_path, trainer__stages=[{"name": "long", "steps": 50}], checkpoint__every=0)
    first = prorl("train", config)
    try:
        lock = tmp_path / "run" / ".prorl.lock"
        deadline = time.monotonic() + 300
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        line = prorl_fails("train", config)
        assert time.monotonic() - started < 30  # at once: no model built, no data loaded
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in line, line
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    from megatron_prorl.runtime.run_lock import RunDirectoryInUse, RunLock

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from megatron_prorl.runtime.run_lock import RunLock; "
                             f"RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunDirectoryInUse, match=f"pid {proc.pid}"):
        RunLock(run).acquire()
    proc.kill()
    proc.wait()
    with RunLock(run):
        assert f"taking over the lock of pid {proc.pid}" in caplog.text


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to make every write fail with ENOSPC")
def test_a_full_disk_for_the_run_summary_is_one_line(tmp_path):
    from megatron_prorl.cli import write_summary
    from megatron_prorl.errors import UserError

    (tmp_path / "summary.json").symlink_to("/dev/full")
    with pytest.raises(UserError, match=f"^{tmp_path / 'summary.json'}: not written \\(No space left on device\\); "
                                        "the run itself is checkpointed$"):
        write_summary({"steps": 3}, str(tmp_path))

