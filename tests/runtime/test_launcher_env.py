"""The one list of launcher variables: what the engine's processes see, and the launch-script printer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_prorl.runtime.launcher_env import (
    LAUNCHER_ENV_PREFIXES,
    TRAINING_ONLY_ENV,
    applied,
    engine_environment,
    import_environment,
    launcher_variables,
    main,
    physical_gpu_ids,
)

ROOT = Path(__file__).resolve().parents[2]
SRUN_ENV = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "5", "PMI_RANK": "5", "PMIX_NAMESPACE": "x",
            "OMPI_COMM_WORLD_SIZE": "2", "MPI_LOCALRANKID": "0"}
KEEP = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "PATH": "/bin", "RANK": "5", "MASTER_PORT": "29500",
        "SLURMD_NODENAME": "n1", "OMPIX": "not a launcher variable"}


def test_launcher_variables_are_found_and_dropped():
    env = {**SRUN_ENV, **KEEP}
    assert launcher_variables(env) == sorted(SRUN_ENV)
    assert import_environment(env) == KEEP


def test_engine_environment_pins_gpus_and_a_port_of_its_own():
    env = engine_environment({**SRUN_ENV, **KEEP}, ["3"], 41234)
    assert not set(SRUN_ENV) & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["MASTER_PORT"] == "41234" and env["PATH"] == "/bin"
    assert engine_environment({}, ["2", "3"], 1)["CUDA_VISIBLE_DEVICES"] == "2,3"
    with pytest.raises(ValueError, match="no GPUs given"):
        engine_environment({}, [], 1)


def test_engine_environment_drops_what_only_training_needs():
    """What the launch script and torchrun set for the trainer alone is not the engine's; the
    launch script's NCCL settings (the fabric the engine's communicators use too) stay."""
    script = (ROOT / "slurm" / "prorl_4node.sh").read_text()
    exported = dict(re.findall(r"^export (\w+)=\$\{\w+:-([^}]*)\}", script, re.M))
    assert exported["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and "CUDA_DEVICE_MAX_CONNECTIONS" in TRAINING_ONLY_ENV
    torchrun = {"RANK": "5", "WORLD_SIZE": "32", "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8"}
    trainer = {**exported, **torchrun, **SRUN_ENV, "PATH": "/bin", "MASTER_ADDR": "n1"}
    env = engine_environment(trainer, ["5"], 41234)
    assert not set(env) & (TRAINING_ONLY_ENV | set(SRUN_ENV)) and set(torchrun) <= TRAINING_ONLY_ENV
    nccl = {k: v for k, v in exported.items() if k.startswith(("NCCL_", "TORCH_NCCL_"))}
    assert nccl and nccl.items() <= env.items()
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["PATH"] == "/bin" and env["MASTER_ADDR"] == "n1"


def test_physical_gpu_ids_follow_the_parent_visibility():
    assert physical_gpu_ids([3], None) == ["3"] and physical_gpu_ids([0, 1], "") == ["0", "1"]
    assert physical_gpu_ids([1], "4,6") == ["6"]  # a task given GPUs 4 and 6: its device 1 is GPU 6
    with pytest.raises(ValueError, match=r"CUDA device 2 is not among CUDA_VISIBLE_DEVICES='4,6'"):
        physical_gpu_ids([2], "4,6")
    with pytest.raises(ValueError, match="entry 'GPU-1a2b' is not a GPU index"):
        physical_gpu_ids([0], "GPU-1a2b")


def test_applied_restores_what_it_changed_and_keeps_what_others_set():
    environ = {**SRUN_ENV, **KEEP}
    before = dict(environ)
    with applied(environ, engine_environment(environ, ["1"], 5555)):
        assert environ == engine_environment(before, ["1"], 5555)
        environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"  # TensorRT-LLM sets its own
    assert environ == {**before, "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    with pytest.raises(KeyError), applied(environ, {}):
        raise KeyError("inside")  # an error inside the block restores too
    assert environ == {**before, "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}


def test_printer(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out.split() == list(LAUNCHER_ENV_PREFIXES)
    assert main(["--unset"], environ={**SRUN_ENV, **KEEP}) == 0
    assert capsys.readouterr().out == "unset " + " ".join(sorted(SRUN_ENV)) + "\n"
    assert main(["--unset"], environ=KEEP) == 0 and capsys.readouterr().out == ""
    assert main(["--bogus"]) == 2 and "usage:" in capsys.readouterr().err


def test_launch_script_usage_in_a_real_shell(tmp_path):
    """What a Slurm launch script runs: eval the printer's output, the launcher variables are gone;
    the printer imports no torch (it runs once per task)."""
    imports = tmp_path / "imports.txt"
    env = {**os.environ, **SRUN_ENV, "PYTHONPATH": str(ROOT), "IMPORTS": str(imports)}
    script = (f'eval "$({sys.executable} -X importtime -m megatron_prorl.runtime.launcher_env --unset 2>"$IMPORTS")"; '
              'env | cut -d= -f1 | sort')
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True)
    names = set(out.stdout.split())
    assert not set(SRUN_ENV) & names and "PATH" in names
    assert "| megatron_prorl" in imports.read_text() and " torch" not in imports.read_text()
