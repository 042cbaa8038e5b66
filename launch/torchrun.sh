#!/usr/bin/env bash
# Train on one machine with one process per visible GPU (one process on a machine without GPUs).
#
#   bash launch/torchrun.sh --config configs/gpt2-small.toml --run.dir=runs/gpt2
#
# Every argument goes to `python -m dist_llm.train`. `--resume auto` comes first, so a rerun of the
# same command (or a restarted worker group) continues from the newest complete checkpoint in the
# run directory; on a fresh run directory it starts from step 0. An explicit `--resume PATH` later
# on the line overrides it.
#
# Environment:
#   NPROC_PER_NODE  processes to start (default: the number of GPUs in CUDA_VISIBLE_DEVICES, else 1)
#   PYTHON          the interpreter (default: python3)
#   PET_*           any other torchrun option, e.g. PET_MAX_RESTARTS=3 restarts the whole group up
#                   to 3 times when a worker dies (each restart resumes from the newest checkpoint).
#
# Stopping cleanly: SIGTERM or Ctrl-C to torchrun reaches every worker; each finishes its step and
# rank 0 writes a checkpoint. torchrun kills workers that take longer than 30 s
# (TORCH_ELASTIC_SHUTDOWN_TIMEOUT raises that for very large checkpoints).
set -euo pipefail
PY=${PYTHON:-python3}
# A restarted worker group must not read the previous group's addresses from a rendezvous store
# shared across restarts (torch >= 2.5 shares it by default; pytorch/pytorch#135712): one fresh
# store per round.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}

# --standalone: a private rendezvous on a free local port, so several runs can share a machine.
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node="$NPROC_PER_NODE" \
    -m dist_llm.train --resume auto "$@"
