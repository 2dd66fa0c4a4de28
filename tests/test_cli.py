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
    ("rollout.temprature=1.0", "key 'rollout.temprature' is not a config key (did you mean `rollout.temperature`?)"),
    ("temperature=1.0", "key 'temperature' is not a config key (did you mean `rollout.temperature`?)"),
    ("model.hf_dir=builtin:tinyy", "no built-in model 'tinyy' (known: tiny)"),
    ("parallel.tensor_model_parallel_size=3", "does not divide num_attention_heads=4"),
    ("trainer.stages=[{name: s, steps: 0}]", "trainer.stages[0] ('s'): steps=0"),
])
def test_bad_overrides_are_one_line_before_any_rank_starts(tmp_path, override, message):
    line = prorl_fails("train", write_config(tmp_path), override)
    assert message in line, line
    assert "assets" not in line  # no path inside the package
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_missing_data_file_names_its_key_and_leaves_nothing(tmp_path):
    missing = tmp_path / "data" / "math.jsonl"
    line = prorl_fails("train", write_config(tmp_path, data__val=[{"path": "arithmetic:add", "size": 4},
                                                                  {"path": str(missing)}]))
    assert line == f"prorl: error: data.val[1].path={str(missing)!r}: no such file or directory", line
    assert not (tmp_path / "run").exists()


def test_the_paper_config_without_its_variables_names_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PRORL_BASE_MODEL", "PRORL_DATA", "PRORL_RUN_DIR")}
    line = prorl_fails("train", "configs/prorl_1p5b_4node.yaml", env=env)
    assert "PRORL_BASE_MODEL is not set: model.hf_dir uses its default /models/DeepSeek-R1-Distill-Qwen-1.5B from " \
           "configs/prorl_1p5b_4node.yaml; set PRORL_BASE_MODEL" in line, line
    # with the model there, the data files: named by key and by variable
    line = prorl_fails("train", "configs/prorl_1p5b_4node.yaml", env={**env, "PRORL_BASE_MODEL": "builtin:tiny"})
    assert line.startswith("prorl: error: data.train[0].path='/data/prorl/math.jsonl': no such file or directory; "
                           "PRORL_DATA is not set"), line


def test_a_data_file_without_usable_rows_is_one_line_from_a_rank(tmp_path):
    """Found while loading data, inside the ranks (TP2: two spawned processes): still one line."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "no answer here", "domain": "math"}\n')
    line = prorl_fails("train", write_config(tmp_path, data__train=[{"path": str(rows)}]),
                       "parallel.tensor_model_parallel_size=2")
    assert f"{rows}: no usable rows" in line, line
    assert not (tmp_path / "run").exists()  # the lock is gone, and the directory made for it


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
        refused = time.monotonic() - started
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in line, line
        # At once: no model built, no data loaded. Measured beside a start that fails while reading
        # its overrides (Python, torch and the config alone), as the busy machine runs both.
        started = time.monotonic()
        prorl_fails("train", config, "trainer.seed=not-a-number")
        start_up = time.monotonic() - started
        assert refused < max(30.0, 3 * start_up), (refused, start_up)
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


def test_a_clean_release_removes_the_lock_and_the_directories_made_for_it(tmp_path, caplog):
    from megatron_prorl.runtime.run_lock import RunLock

    run = tmp_path / "a" / "b" / "run"
    with RunLock(run):
        assert (run / ".prorl.lock").is_file()
    assert not (tmp_path / "a").exists()  # a run that never started leaves nothing
    run.mkdir(parents=True)
    with RunLock(run):
        (run / "config.yaml").write_text("x")
    assert sorted(os.listdir(run)) == ["config.yaml"]  # the run's files stay, the lock goes
    with RunLock(run):
        pass
    assert "taking over" not in caplog.text  # nothing left to take over


def test_a_lock_released_between_anothers_open_and_lock_is_not_shared(tmp_path, monkeypatch):
    """B opens the lock file, A's clean exit removes it (and the directory made for it), then B
    locks what it opened: B sees the file is no longer the directory's and locks a new one, so
    a third run is still refused."""
    import fcntl
    import types

    from megatron_prorl.runtime import run_lock
    from megatron_prorl.runtime.run_lock import RunDirectoryInUse, RunLock

    run = tmp_path / "run"
    first, second = RunLock(run), RunLock(run)
    first.acquire()
    locked = []

    def flock(fd, op):
        if not locked:
            first.release()
        locked.append(os.fstat(fd).st_ino)
        return fcntl.flock(fd, op)

    monkeypatch.setattr(run_lock, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX,
                                                                 LOCK_NB=fcntl.LOCK_NB))
    second.acquire()
    monkeypatch.undo()
    assert len(locked) == 2 and (run / ".prorl.lock").stat().st_ino == locked[1]
    with pytest.raises(RunDirectoryInUse, match=f"pid {os.getpid()}"):
        RunLock(run).acquire()
    second.release()
    assert not run.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to make every write fail with ENOSPC")
def test_a_full_disk_for_the_run_summary_is_one_line(tmp_path):
    from megatron_prorl.cli import write_summary
    from megatron_prorl.errors import UserError

    (tmp_path / "summary.json").symlink_to("/dev/full")
    with pytest.raises(UserError, match=f"^{tmp_path / 'summary.json'}: not written \\(No space left on device\\); "
                                        "the run itself is checkpointed$"):
        write_summary({"steps": 3}, str(tmp_path))



def all_parsers():
    """Every command's parser, subcommands included: (command, parser)."""
    import argparse

    from megatron_prorl import cli, convert_cli
    from megatron_prorl.eval import cli as eval_cli
    from megatron_prorl.train import plot

    def walk(name, parser):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(f"{name} {sub_name}", sub)

    for name, parser in (("prorl", cli.build_parser()), ("prorl eval", eval_cli.run_parser()),
                         ("prorl eval compare", eval_cli.compare_parser()),
                         ("prorl eval creativity", eval_cli.creativity_parser()),
                         ("prorl-convert", convert_cli.build_parser()), ("prorl plot", plot.build_parser())):
        yield from walk(name, parser)


def test_every_option_of_every_command_has_help_with_its_default():
    import argparse

    seen, missing = set(), []
    for command, parser in all_parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            name = f"{command} {'/'.join(action.option_strings) or action.dest}"
            seen.add(command)
            text = formatter._expand_help(action) if action.help else ""
            optional = (action.option_strings and action.nargs != 0 and not action.required) or action.nargs in ("*", "?")
            if not text:
                missing.append(f"{name}: no help")
            elif optional and "default" not in text.lower():
                missing.append(f"{name}: default not shown ({text!r})")
    assert missing == []
    assert {"prorl train", "prorl plot", "prorl data prepare", "prorl eval", "prorl eval compare",
            "prorl eval creativity", "prorl-convert hf-to-megatron", "prorl-convert megatron-to-hf",
            "prorl-convert verify"} <= seen


@pytest.mark.parametrize("module, prog", [("megatron_prorl.cli", "prorl"), ("megatron_prorl.convert_cli", "prorl-convert")])
def test_version(module, prog):
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{prog} {version('megatron-prorl')} (torch {version('torch')}, megatron-core "), \
        proc.stdout
