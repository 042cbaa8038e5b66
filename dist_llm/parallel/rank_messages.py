"""What ranks other than 0 print: their errors, and one line saying they joined.

Rank 0 prints the run's progress; the others stay quiet. But on a multi-node launch each node has its
own log, and a node whose ranks printed nothing cannot be told apart from one that never started. So
every rank prints its errors (with its rank and host, so that lines from several ranks can be told
apart), including those raised before the process group forms, and a one-line "rank N on HOST ready"
once it has joined. A config error is the same on every rank: each node prints it once (its local rank
0), not once per process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from dist_llm.config import ConfigError


def launch_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(global rank, local rank) from torchrun's or srun's variables: usable before the process group
    forms. (0, 0) for a single process; a value that is not a number counts as 0 (the launch check
    reports it); without a local rank, the rank stands for it."""
    env = os.environ if env is None else env
    for rank_var, local_var in (("RANK", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_LOCALID")):
        if rank_var in env:
            rank = int(env[rank_var]) if env[rank_var].isdigit() else 0
            local = env.get(local_var, str(rank))
            return rank, int(local) if local.isdigit() else 0
    return 0, 0


def error_line(error: BaseException, env: Mapping[str, str] | None = None) -> str | None:
    """The one line this rank prints for an error that ends the run, or None when another rank of
    this node prints it."""
    rank, local_rank = launch_ranks(env)
    if isinstance(error, ConfigError) and rank != 0 and local_rank != 0:
        return None
    where = "" if rank == 0 else f" (rank {rank} on {socket.gethostname()})"
    return f"error{where}: {error}"


def ready_line(rank: int) -> str:
    return f"rank {rank} on {socket.gethostname()} ready"
