#!/bin/bash
# ProRL on a Slurm cluster: 4 nodes x 8 GPUs, one task (rank) per GPU, started by srun.
#
#   sbatch [sbatch options] slurm/prorl_4node.sh [CONFIG] [key=value ...]
#
# Submit from the repository root. CONFIG defaults to configs/prorl_1p5b_4node.yaml. Each rank
# runs `python -m megatron_prorl.cli train CONFIG key=value ...` and reads its rank, world size
# and rendezvous (first host of the node list, a port derived from the job id) from Slurm's
# variables (megatron_prorl/runtime/distributed.py). Every #SBATCH line below is a default that an
# option on the sbatch command line overrides, so the same script runs the tiny config on CPU
# nodes, e.g. TP2 x PP2 on four nodes:
#
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=0 --cpus-per-task=1 --time=20 \
#       slurm/prorl_4node.sh configs/tiny_cpu.yaml \
#       parallel.tensor_model_parallel_size=2 parallel.pipeline_model_parallel_size=2
#
# Environment (optional; sbatch passes the submitting shell's environment to the job):
#   PRORL_IMAGE         run the ranks in this container through pyxis/enroot: a squashfs file
#                       (enroot import) or an enroot URI, e.g. nvcr.io#myorg/megatron-prorl:1.0
#   PRORL_MOUNTS        more container mounts, SRC:DST[,SRC:DST...] (data, models, run dirs);
#                       the submit directory is always mounted at the same path
#   PRORL_PYTHON        the Python to run (default: .venv/bin/python when present, else python3;
#                       in a container: python)
#   PRORL_LOG_DIR       where each start's rank log goes (default: logs)
#   PRORL_CPUS_PER_TASK CPUs per rank (default: sbatch's --cpus-per-task when given, else the
#                       node's CPUs divided among its ranks)
#   PRORL_MAX_RESTARTS  requeue at most this many times (default: 100)
#
# Long runs and preemption: Slurm sends USR1 to this batch shell --signal's seconds before the
# time limit; the shell passes it on to the ranks, which finish the step, write a checkpoint
# and exit; the shell then requeues the job (same job id, SLURM_RESTART_COUNT + 1), and the
# requeued job resumes from OUTPUT_DIR/checkpoints/latest (the trainer does that by itself).
# Each start logs to its own file: logs/NAME-JOBID.restartN.log; this shell's own output (one
# file per job id, appended on every start) names them. The same USR1 by hand:
#   scancel --signal=USR1 --batch JOBID
# Alternatively chain jobs instead of requeueing: each job of the chain resumes the run, and
# singleton lets one job of that name and user run at a time:
#   for i in 1 2 3 4; do sbatch --job-name=prorl-1p5b --dependency=singleton slurm/prorl_4node.sh; done
# (or --dependency=afterany:JOBID to start after one given job ends, however it ended).
#
#SBATCH --job-name=prorl
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# --exclusive: whole nodes with all their CPUs (as Megatron-LM's launch examples ask), shared
# among the node's ranks below: no fixed count per rank, which a node with fewer CPUs than it
# would refuse (a DGX H100 has 112 cores for 8 GPUs, other nodes differ). --mem=0: all of each
# node's memory. --signal 900 s: long enough to finish the slowest step
# and write a checkpoint (see time/step in metrics.jsonl; raise it for 16k-token stages).
set -euo pipefail

config=${1:-configs/prorl_1p5b_4node.yaml}
if (( $# )); then shift; fi
restart=${SLURM_RESTART_COUNT:-0}
log_dir=${PRORL_LOG_DIR:-logs}
mkdir -p "$log_dir"
rank_log="$log_dir/${SLURM_JOB_NAME}-${SLURM_JOB_ID}.restart${restart}.log"
say() { echo "[prorl_4node $(date '+%F %T')] $*"; }

# CPUs per rank: PRORL_CPUS_PER_TASK, else sbatch's --cpus-per-task, else the CPUs Slurm gave this
# node divided among its ranks (at least 1). Sets cpus_per_task and cpus_how (what it came from).
cpus_per_rank() {
    local name value
    for name in PRORL_CPUS_PER_TASK SLURM_CPUS_PER_TASK; do
        value=${!name:-}
        if [[ -n $value ]]; then
            if [[ ! $value =~ ^[1-9][0-9]*$ ]]; then
                echo "prorl_4node.sh: error: $name=$value: expected a whole number of CPUs >= 1" >&2
                return 2
            fi
            cpus_per_task=$value cpus_how=$name
            return 0
        fi
    done
    # Outside a job: the CPUs this shell may run on (nproc without the OpenMP limits it honours).
    local node_cpus=${SLURM_CPUS_ON_NODE:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
    local tasks=${SLURM_TASKS_PER_NODE:-1}  # e.g. 8(x4): 8 on each of 4 nodes
    local ranks=${SLURM_NTASKS_PER_NODE:-${tasks%%[(,]*}}
    cpus_per_task=$(( node_cpus / ranks > 0 ? node_cpus / ranks : 1 ))
    cpus_how="the node's $node_cpus CPUs / $ranks ranks"
}
cpus_per_rank || exit 2
say "job $SLURM_JOB_ID start $restart: $SLURM_JOB_NUM_NODES nodes ($SLURM_JOB_NODELIST)," \
    "$SLURM_NTASKS ranks, ${SLURM_GPUS_ON_NODE:-0} GPUs per node, $cpus_per_task CPUs per rank ($cpus_how);" \
    "ranks log to $rank_log"

# ---- NCCL and CUDA for Megatron on H100 + InfiniBand (no effect on CPU runs) --------------
# One hardware work queue per GPU keeps Megatron's TP communication kernels in issue order, so
# they overlap with compute (needed before Blackwell; not with FSDP). Training only: the engine's
# workers start without it (megatron_prorl/runtime/launcher_env.py, TRAINING_ONLY_ENV).
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# InfiniBand service level NCCL uses, as Megatron-LM's cluster examples set it; ask the
# cluster's admins which one their fabric gives to NCCL.
export NCCL_IB_SL=${NCCL_IB_SL:-1}
# Bigger chunks for point-to-point sends over the network (pipeline-parallel activations and
# the weight sync to the engines), as Megatron-LM's pyxis examples set it.
export NCCL_P2P_NET_CHUNKSIZE=${NCCL_P2P_NET_CHUNKSIZE:-2097152}
# Async collectives free their buffers when they finish instead of pinning the caching
# allocator's blocks to the communication stream (lower, steadier memory).
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
# NCCL's own reasons for a failure (a dead link, a timeout) in the rank logs.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# CPU-side threads per rank: the CPUs it gets.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$cpus_per_task}
export PYTHONUNBUFFERED=1

# ---- Launcher variables TensorRT-LLM must not inherit (the one place in this script) -----
# `import tensorrt_llm` starts MPI (mpi4py); MPI that finds PMI/PMIx/Open MPI launcher
# variables takes itself for an srun/mpirun rank and fails or hangs. The ranks meet through
# torch.distributed, not MPI: srun gets --mpi=none (below) so Slurm adds no PMI variables, and
# the ones inherited from the submitting shell are dropped here. SLURM_* must reach the ranks
# (their rank and world size); the trainer drops those itself just before it starts the engine.
# The list is megatron_prorl.runtime.launcher_env.LAUNCHER_ENV_PREFIXES without SLURM (a test checks it).
launcher_env_prefixes=(PMI PMIX MPI OMPI)
for name in $(compgen -e); do
    for prefix in "${launcher_env_prefixes[@]}"; do
        if [[ $name == "${prefix}_"* ]]; then unset "$name"; fi
    done
done

# ---- The ranks ---------------------------------------------------------------------------
# srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05): it is given explicitly. All
# GPUs of a node stay visible to each of its ranks (no --gpus-per-task): each rank picks its own by
# local rank, and CUDA IPC between the ranks of a node needs them visible.
srun_args=(--kill-on-bad-exit=1 --mpi=none --cpus-per-task="$cpus_per_task" --output="$rank_log")
if [[ -n ${PRORL_IMAGE:-} ]]; then
    srun_args+=(--container-image="$PRORL_IMAGE" --container-workdir="$PWD"
                --container-mounts="$PWD:$PWD${PRORL_MOUNTS:+,$PRORL_MOUNTS}" --no-container-mount-home)
    python=${PRORL_PYTHON:-python}
    say "container $PRORL_IMAGE"
elif [[ -x .venv/bin/python ]]; then
    python=${PRORL_PYTHON:-.venv/bin/python}
else
    python=${PRORL_PYTHON:-python3}
fi
srun "${srun_args[@]}" "$python" -m megatron_prorl.cli train "$config" "$@" &
srun_pid=$!

# ---- Warning signal: checkpoint, then requeue --------------------------------------------
warned=0
pass_on() {
    say "batch shell got SIG$1: passing it on to the ranks"
    kill -s "$1" "$srun_pid" 2>/dev/null || true  # srun forwards it to every task
}
trap 'warned=1; pass_on USR1' USR1
trap 'pass_on TERM' TERM  # preemption or scancel: checkpoint and stop, Slurm decides the rest

# A trapped signal ends `wait` early (status > 128): wait again while srun still runs.
rc=0
wait "$srun_pid" || rc=$?
while (( rc > 128 )) && [[ -n $(jobs -rp) ]]; do
    rc=0
    wait "$srun_pid" || rc=$?
done

if (( rc != 0 )); then
    say "ranks failed (exit $rc); the end of $rank_log:"
    tail -n 30 "$rank_log" || true
    exit "$rc"
fi
if (( warned )); then
    if (( restart < ${PRORL_MAX_RESTARTS:-100} )); then
        say "checkpoint written; requeueing job $SLURM_JOB_ID (start $((restart + 1)) resumes from it)"
        scontrol requeue "$SLURM_JOB_ID"
    else
        say "checkpoint written; not requeueing: $restart restarts reached PRORL_MAX_RESTARTS"
    fi
fi
say "done"
