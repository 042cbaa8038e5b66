#!/usr/bin/env bash
# Train on several machines: run this same command on every node (by hand, or from a scheduler as
# slurm/pretrain.sh does). torch's c10d rendezvous gathers the nodes at RDZV_ENDPOINT and assigns the
# node ranks itself, so no node needs to know its own rank.
#
#   # on each of 2 nodes; node0 is a host name every node can reach, 29500 a free TCP port on it:
#   NNODES=2 RDZV_ENDPOINT=node0:29500 RDZV_ID=gpt2-run1 \
#       bash launch/multinode.sh --config configs/gpt2-small.toml --run.dir=/shared/runs/gpt2
#
# The run directory must be on storage all nodes share: rank 0 writes checkpoints there, and every
# rank reads them back on `--resume auto` (added first, so a later `--resume PATH` overrides it).
#
# Environment:
#   NNODES          number of nodes (required); "MIN:MAX" lets the group run with any count in between
#   RDZV_ENDPOINT   host:port of the rendezvous; the node whose name matches hosts it (required)
#   RDZV_ID         a name unique to this run, the same on every node (default: dist_llm)
#   NPROC_PER_NODE  processes per node (default: the number of visible GPUs, else 1)
#   MAX_RESTARTS    how often torchrun restarts the group after a failure (default: 0); each restart
#                   re-runs the rendezvous and every worker resumes from the newest checkpoint
#   PYTHON          the interpreter (default: python3)
#
# Stopping cleanly: send SIGUSR1 (or SIGTERM) to the trainer processes on every node; they finish the
# step, write a checkpoint and exit 0. torchrun ignores SIGUSR1 here, because a scheduler (SLURM)
# signals every process of the job step at once, and torchrun must outlive that signal to see its
# workers finish (the trainer installs its own handler; the ignored disposition does not stop it).
# NCCL: set NCCL_SOCKET_IFNAME / NCCL_IB_HCA when nodes have several networks (see slurm/env.sh).
set -euo pipefail
: "${NNODES:?set NNODES (number of nodes)}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT (host:port of the rendezvous, reachable from every node)}"
PY=${PYTHON:-python3}
# A restarted worker group must not read the previous group's addresses from a rendezvous store
# shared across restarts (torch >= 2.5 shares it by default; pytorch/pytorch#135712): one fresh
# store per round.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}

trap '' USR1
exec "$PY" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-dist_llm}" \
    --max-restarts="${MAX_RESTARTS:-0}" \
    -m dist_llm.train --resume auto "$@"
