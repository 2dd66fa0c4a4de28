"""slurm/prorl_4node.sh under a real Slurm: four virtual nodes on this machine (tests/slurm/
cluster.py), real sbatch, the #SBATCH defaults (4 x 8 GPUs) overridden on the command line as on
CPU nodes, the tiny config at TP2 x PP2 over gloo, one rank per node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from cluster import FINISHED

from megatron_prorl.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "slurm" / "prorl_4node.sh"
# One rank and one (fake) GPU per node; the warning would come 60 s before the 10 min limit,
# which no test reaches (test b sends it by hand).
CPU_NODES = ["--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10",
             "--signal=B:USR1@60"]
TINY = ["configs/tiny_cpu.yaml", "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
        "trainer.stages.0.steps=3", "data.val=[]", "data.train.0.size=512", "data.train.1.size=512",
        "batch.prompts_per_step=8", "batch.prompts_per_mini_batch=4", "rollout.n=4", "rewards.num_workers=1",
        "checkpoint.every=0", "logging.progress=false", "logging.tensorboard=false"]


def submit(slurm, tmp: Path, name: str, *train_args: str) -> str:
    env = {
        "PRORL_PYTHON": sys.executable,
        "PRORL_LOG_DIR": str(tmp / "logs"),
        # The virtual nodes n1..n4 share this host and their names do not resolve.
        "MASTER_ADDR": "127.0.0.1",
    }
    return slurm.sbatch([f"--job-name={name}", f"--output={tmp}/%x-%j.out", *CPU_NODES, SCRIPT, *train_args],
                        cwd=ROOT, env=env)


def job_output(tmp: Path, name: str, job_id: str) -> str:
    return (tmp / f"{name}-{job_id}.out").read_text()


def rank_log(tmp: Path, name: str, job_id: str, restart: int) -> str:
    return (tmp / "logs" / f"{name}-{job_id}.restart{restart}.log").read_text()


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == kind]


def test_tiny_tp2_pp2_across_four_nodes_runs_to_completion(slurm, tmp_path):
    run = tmp_path / "run"
    job_id = submit(slurm, tmp_path, "tiny", *TINY, f"trainer.output_dir={run}")
    job = slurm.wait_finished(job_id, timeout=300)
    out = job_output(tmp_path, "tiny", job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), out + slurm.logs()
    # Whole nodes (--exclusive): all 8 of each node's (fake) GPUs, whatever --gpus-per-node asked.
    assert "4 nodes (n[1-4]), 4 ranks, 8 GPUs per node, 1 CPUs per rank (SLURM_CPUS_PER_TASK)" in out
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3]
    log = rank_log(tmp_path, "tiny", job_id, 0)
    assert log.count("ProRL run finished: 3 steps") == 1, log[-3000:]  # rank 0 alone reports


def test_warning_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    run, steps = tmp_path / "run", 5
    job_id = submit(slurm, tmp_path, "warned", *TINY, f"trainer.stages.0.steps={steps}", f"trainer.output_dir={run}")
    # A logged step means the ranks are in the training loop (their handler is installed).
    deadline = time.monotonic() + 300
    while not ((run / "metrics.jsonl").is_file() and records(run, "train")):
        job = slurm.job(job_id)
        assert job.state in ("PENDING", "RUNNING"), job_output(tmp_path, "warned", job_id)
        assert time.monotonic() < deadline, f"no step logged after 300 s: {job.fields}"
        time.sleep(0.2)
    # As Slurm delivers --signal=B:USR1: to the batch shell alone, which passes it on.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm.env, check=True, timeout=30)

    slurm.wait_until(job_id, lambda j: j.restarts >= 1 and j.state == "PENDING" or j.state in FINISHED,
                     timeout=300, what="requeued")
    # Slurm (22.05) lets a requeued job start again only ~2 minutes later (its BeginTime); the
    # test need not wait that long, but not "now" either: the nodes revoked the first start's job
    # credential, and a new one issued within the same second counts as revoked too ("Killing
    # non-startable batch JobId=2: Job credential revoked", the job FAILED with exit code 1).
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+3"], env=slurm.env, check=True,
                   timeout=30)
    job = slurm.wait_finished(job_id, timeout=300)
    out = job_output(tmp_path, "warned", job_id)
    assert (job.state, job.exit_code, job.restarts) == ("COMPLETED", "0:0", 1), out + slurm.logs()
    assert "got SIGUSR1: passing it on to the ranks" in out and "requeueing job" in out
    assert "start 0:" in out and "start 1:" in out  # one output file, appended by both starts

    events = [e for e in records(run, "event") if "stopping on SIGUSR1" in e["text"]]
    assert len(events) == 1, out
    stopped_at = events[0]["step"]
    assert 1 <= stopped_at < steps
    first, second = rank_log(tmp_path, "warned", job_id, 0), rank_log(tmp_path, "warned", job_id, 1)
    assert "received SIGUSR1" in first
    assert f"at step {stopped_at}" in second and "resumed from" in second, second[-3000:]
    # Step numbering continues across the requeue: no gap, no repeat.
    assert [r["step"] for r in records(run, "train")] == list(range(1, steps + 1))


def test_bad_config_fails_fast_naming_the_key(slurm, tmp_path):
    job_id = submit(slurm, tmp_path, "bad", "configs/tiny_cpu.yaml", "rollout.temprature=1.0",
                    f"trainer.output_dir={tmp_path / 'run'}")
    job = slurm.wait_finished(job_id, timeout=120)
    out = job_output(tmp_path, "bad", job_id)
    assert job.state == "FAILED" and job.exit_code != "0:0", out
    assert "rollout.temprature" in out and "not a config key" in out, out
    assert not (tmp_path / "run").exists()


def test_script_drops_the_launcher_variables_the_engine_must_not_inherit():
    """The batch shell drops what the trainer drops around TensorRT-LLM's start, except SLURM_*,
    from which the ranks read their rank and world size."""
    from megatron_prorl.runtime.launcher_env import LAUNCHER_ENV_PREFIXES

    (listed,) = re.findall(r"^launcher_env_prefixes=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert {f"{p}_" for p in listed.split()} == set(LAUNCHER_ENV_PREFIXES) - {"SLURM_"}


def cpus_per_rank(env: dict) -> tuple[int, str, str]:
    """The script's own CPUs-per-rank function, run in bash (as the batch shell runs it: set -eu)
    with ``env`` as the job's variables: (exit status, "cpus|how", stderr)."""
    text = SCRIPT.read_text()
    (function,) = re.findall(r"^cpus_per_rank\(\) \{\n.*?^\}\n", text, re.S | re.M)
    script = f'set -euo pipefail\n{function}cpus_per_rank\necho "$cpus_per_task|$cpus_how"\n'
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PRORL_"))}
    done = subprocess.run(["bash", "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def test_cpus_per_rank_come_from_the_node_or_an_override():
    """No fixed count: the node's CPUs divided among its ranks (a DGX H100 under --exclusive:
    224 hardware threads for 8 ranks), sbatch's --cpus-per-task when given, PRORL_CPUS_PER_TASK
    over both; a bad value is one line and exit status 2."""
    assert cpus_per_rank({"SLURM_CPUS_ON_NODE": "224", "SLURM_NTASKS_PER_NODE": "8"}) == (
        0, "28|the node's 224 CPUs / 8 ranks", "")
    assert cpus_per_rank({"SLURM_CPUS_ON_NODE": "112", "SLURM_TASKS_PER_NODE": "8(x4)"})[1].startswith("14|")
    assert cpus_per_rank({"SLURM_CPUS_ON_NODE": "2", "SLURM_NTASKS_PER_NODE": "4"})[1].startswith("1|")
    usable = len(os.sched_getaffinity(0))  # outside Slurm; OMP_NUM_THREADS (1 in CI) does not count
    assert cpus_per_rank({"OMP_NUM_THREADS": "1"})[1] == f"{usable}|the node's {usable} CPUs / 1 ranks"
    assert cpus_per_rank({"SLURM_CPUS_ON_NODE": "224", "SLURM_NTASKS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "16"}) == (
        0, "16|SLURM_CPUS_PER_TASK", "")
    assert cpus_per_rank({"SLURM_CPUS_PER_TASK": "16", "PRORL_CPUS_PER_TASK": "12"})[1] == "12|PRORL_CPUS_PER_TASK"
    code, _, err = cpus_per_rank({"PRORL_CPUS_PER_TASK": "all"})
    assert code == 2 and err == "prorl_4node.sh: error: PRORL_CPUS_PER_TASK=all: expected a whole number of CPUs >= 1"


def test_without_cpus_per_task_each_rank_gets_its_share_of_the_node(slurm, tmp_path):
    """Submitted with no --cpus-per-task, the job gets whole nodes (--exclusive: 2 CPUs and 8 fake
    GPUs each here) and srun divides the CPUs among the node's ranks. A config error ends the job
    once the ranks ran."""
    for ranks, share in ((1, 2), (2, 1)):
        name = f"share{ranks}"
        nodes = [a for a in CPU_NODES if not a.startswith(("--cpus-per-task", "--ntasks-per-node"))]
        job_id = slurm.sbatch([f"--job-name={name}", f"--output={tmp_path}/%x-%j.out", *nodes,
                               f"--ntasks-per-node={ranks}", SCRIPT, "configs/tiny_cpu.yaml", "rollout.temprature=1.0"],
                              cwd=ROOT, env={"PRORL_PYTHON": sys.executable, "PRORL_LOG_DIR": str(tmp_path / "logs")})
        job = slurm.wait_finished(job_id, timeout=120)
        out = job_output(tmp_path, name, job_id)
        assert f"{4 * ranks} ranks, 8 GPUs per node, {share} CPUs per rank (the node's 2 CPUs / {ranks} ranks)" in out, out
        assert job.state == "FAILED" and "rollout.temprature" in out, out  # the ranks started and read the config
