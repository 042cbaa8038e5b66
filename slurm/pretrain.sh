#!/usr/bin/env bash
# Pretrain on a SLURM cluster, from the project's root directory:
#
#   sbatch slurm/pretrain.sh --config configs/gpt2-small.toml --run.dir=runs/gpt2
#
# The #SBATCH lines are defaults for a GPU cluster; options on the sbatch command line override them:
#   sbatch --nodes=4 --time=12:00:00 --partition=gpu slurm/pretrain.sh --config ...
# The job runs one torchrun per node (launch/multinode.sh), which starts one trainer process per GPU
# (NPROC_PER_NODE overrides: `NPROC_PER_NODE=2 sbatch --gpus-per-node=0 ... slurm/pretrain.sh` on CPUs).
# Your Python environment and NCCL settings: slurm/env.sh. The run directory must be on storage all
# nodes share.
#
# Time limits and preemption: SLURM sends this batch shell SIGUSR1 120 s before the job's end
# (--signal=B:USR1@120). The shell passes it on to every trainer process; they finish the current
# step, write a checkpoint and exit 0; then the shell requeues the job (scontrol requeue), and the
# requeued job, with the same arguments, resumes from that checkpoint (`--resume auto`).
# It does not requeue forever: only after a clean stop (every trainer exited 0), and at most
# DIST_LLM_MAX_REQUEUES times (default 20; SLURM counts requeues in SLURM_RESTART_COUNT). A run that
# finishes its steps exits without requeueing. Raise the @120 if writing a checkpoint takes longer.
# `scancel` (SIGTERM to every process) stops the trainers with a checkpoint when they manage within
# SLURM's KillWait, and is never requeued.
#
#SBATCH --job-name=dist_llm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
set -euo pipefail

# Inside a job this script runs from a copy in SLURM's spool directory, so `dirname $0` is not the
# project: the project is where sbatch was run (or DIST_LLM_DIR).
PROJECT_DIR=${DIST_LLM_DIR:-${SLURM_SUBMIT_DIR:?this script runs under sbatch}}
if [ ! -f "$PROJECT_DIR/launch/multinode.sh" ]; then
    echo "slurm/pretrain.sh: $PROJECT_DIR is not the dist_llm project; run sbatch from its root" \
        "or set DIST_LLM_DIR=/path/to/dist_llm" >&2
    exit 2
fi
export PROJECT_DIR
# Activation scripts (conda's in particular) often read unset variables: no `set -u` while they run.
set +u
# shellcheck source=slurm/env.sh
source "$PROJECT_DIR/slurm/env.sh"
set -u

# c10d rendezvous hosted by the first node; the port is derived from the job id so that two jobs
# sharing a node do not collide, and the rendezvous id is the job id (the same after a requeue).
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export NNODES=$SLURM_NNODES
export RDZV_ENDPOINT=$head_node:${RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export RDZV_ID=$SLURM_JOB_ID
max_requeues=${DIST_LLM_MAX_REQUEUES:-20}
echo "dist_llm job $SLURM_JOB_ID (requeued ${SLURM_RESTART_COUNT:-0} times): $NNODES node(s)," \
    "rendezvous at $RDZV_ENDPOINT, project $PROJECT_DIR, train args: $*"

# SLURM signals only this shell (B:); pass the stop request on through srun, which delivers it to
# every process of the step on every node: the trainers act on it, torchrun ignores it.
stop_signal=""
trapped=0
srun_pid=""
on_signal() {
    trapped=1
    [ -n "$stop_signal" ] && return
    stop_signal=$1
    echo "dist_llm job $SLURM_JOB_ID: SIG$1 received; the trainers checkpoint and stop"
    if [ -n "$srun_pid" ]; then kill -USR1 "$srun_pid" 2>/dev/null || true; fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# srun does not inherit the job's --cpus-per-task (SLURM >= 22.05): pass it on, or each node's
# torchrun and all its workers would be confined to one CPU.
srun --ntasks="$NNODES" --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    --kill-on-bad-exit=1 bash "$PROJECT_DIR/launch/multinode.sh" "$@" &
srun_pid=$!
[ -z "$stop_signal" ] || kill -USR1 "$srun_pid" 2>/dev/null || true

# `wait` returns early whenever a trapped signal arrives; wait again until srun has really ended.
rc=""
while [ -z "$rc" ]; do
    trapped=0
    status=0
    wait "$srun_pid" || status=$?
    [ "$trapped" = 1 ] || rc=$status
done

if [ "$stop_signal" = USR1 ]; then
    if [ "$rc" != 0 ]; then
        echo "dist_llm job $SLURM_JOB_ID: trainers exited with code $rc after the stop signal; not requeued" >&2
        exit "$rc"
    fi
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "$max_requeues" ]; then
        echo "dist_llm job $SLURM_JOB_ID: checkpoint written, but not requeued: requeued" \
            "${SLURM_RESTART_COUNT:-0} times already, DIST_LLM_MAX_REQUEUES=$max_requeues." \
            "Submit again to continue from the checkpoint." >&2
        exit 3
    fi
    echo "dist_llm job $SLURM_JOB_ID: checkpoint written; requeueing"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$rc"
