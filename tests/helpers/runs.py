"""`prorl train` runs for the end-to-end tests: a small config on the shipped tiny model, the
command in a subprocess of its own session (as a user runs it; its whole process group can be
signalled), and the run's metrics read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Wall-clock and throughput fields differ between runs; everything else must match exactly.
TIMING = ("time/", "tokens_per_s", "sync/gb_per_s", "time")


def write_config(tmp: Path, **extra) -> Path:
    cfg = {
        "model": {"hf_dir": "builtin:tiny", "dtype": "fp32"},
        "optim": {"lr": 3e-4},
        "batch": {"prompts_per_step": 8, "prompts_per_mini_batch": 4, "micro_batch_size": 16},
        "rollout": {"n": 4, "temperature": 1.2, "max_prompt_length": 128, "max_response_length": 12},
        "rewards": {"num_workers": 1},
        "data": {"seed": 0, "train": [{"path": "arithmetic:add", "size": 2000}],
                 "val": [{"path": "arithmetic:add", "size": 16}]},
        "trainer": {"seed": 1, "output_dir": str(tmp / "run"), "val_samples": 2,
                    "stages": [{"name": "main", "steps": 3}]},
        # A reference reset (optimizer re-initialised) at step 2: its checkpoint is a reset step's.
        "reset": {"every_n_steps": 2},
        "checkpoint": {"every": 1, "keep_last": 2},
        "logging": {"tensorboard": False, "progress": False},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def prorl(*args, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``prorl ARGS`` in its own session (a signal to its process group is Slurm's); ``env``
    adds to this process's environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "megatron_prorl.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def run_ok(*args, timeout=600, env: dict | None = None) -> str:
    proc = prorl(*args, env=env)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def prorl_fails(*args, timeout=300, env: dict | None = None, command: str = "prorl", alone: bool = False) -> str:
    """Run ``prorl ARGS``; it must fail with exit code 2 and one line on stderr, ``COMMAND: error:
    ...``, no traceback (``alone``: and nothing else on stderr). Returns that line. ``env``: the
    whole environment (default: this one's)."""
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "megatron_prorl.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not alone or proc.stderr.strip() == errors[0], proc.stderr[-3000:]
    return errors[0]


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def comparable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith(TIMING)}


def ctrl_c(proc: subprocess.Popen, last_line: str) -> str:
    """Ctrl-C as a terminal sends it (SIGINT to the process group); the command must end with
    exit code 130 and ``last_line``, without a traceback. Returns its output."""
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and out.strip().splitlines()[-1] == last_line, out[-3000:]
    return out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 600.0, what: str = "the condition") -> None:
    """Poll ``condition`` while the run ``proc`` is alive (its output shown if it ends first)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}:\n" + proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
