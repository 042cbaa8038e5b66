"""Batch arithmetic and run length, derived once the world size and the data size are known.

The configured quantity is the global batch in tokens. With micro-batch b sequences of T tokens on W
ranks, each optimizer step runs A = global_batch_tokens / (b * T * W) micro-steps per rank, so changing
the number of GPUs changes A, not the optimisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dist_llm.config import ConfigError, RunConfig


@dataclass(frozen=True)
class RunPlan:
    micro_batch_size: int
    accum_steps: int
    global_batch_seqs: int
    global_batch_tokens: int
    steps_per_epoch: float
    total_steps: int
    decay_steps: int  # where the cosine schedule reaches min_lr


def make_plan(cfg: RunConfig, world_size: int, train_windows: int, max_windows: int | None = None,
              say: Callable[[str], None] = print) -> RunPlan:
    """max_windows: the most windows the data can give (a mixture with data.on_exhausted = "stop")."""
    t, ctx = cfg.train, cfg.model.context_length
    seqs = t.global_batch_tokens // ctx
    per_micro_step = t.micro_batch_size * world_size
    if seqs % per_micro_step:
        fix = "pick a global batch that is a multiple of it"
        if seqs % world_size == 0:  # a smaller micro-batch keeps the global batch: more accumulation
            fitting = max(b for b in range(1, t.micro_batch_size) if (seqs // world_size) % b == 0)
            fix += f", or keep it with --train.micro_batch_size={fitting}"
        raise ConfigError(
            f"'train.global_batch_tokens' ({t.global_batch_tokens} = {seqs} sequences of {ctx} tokens) is "
            f"not divisible by train.micro_batch_size ({t.micro_batch_size}) x world size ({world_size}) = "
            f"{per_micro_step} sequences; {fix}")
    steps_per_epoch = train_windows / seqs
    if steps_per_epoch < 1:
        raise ConfigError(f"'train.global_batch_tokens' ({t.global_batch_tokens}) is larger than the whole "
                          f"training split ({train_windows} windows of {ctx} tokens)")
    lengths = []
    if t.max_steps:
        lengths.append(t.max_steps)
    if t.max_tokens:
        lengths.append(math.ceil(t.max_tokens / t.global_batch_tokens))
    if t.num_epochs:
        lengths.append(math.ceil(t.num_epochs * steps_per_epoch))
    total = min(lengths)  # several limits given: stop at the first one reached
    if max_windows is not None and max_windows // seqs < total:
        if max_windows < seqs:
            raise ConfigError(f"'data.on_exhausted' is \"stop\" and a source of the mixture runs out after "
                              f"{max_windows} windows, less than one global batch ({seqs} windows)")
        say(f"data: a mixture source runs out after {max_windows:,} windows and data.on_exhausted is "
            f"\"stop\": the run ends at step {max_windows // seqs} instead of {total}")
        total = max_windows // seqs
    decay = cfg.optim.decay_steps or total
    if cfg.optim.warmup_steps >= decay:
        raise ConfigError(f"'optim.warmup_steps' ({cfg.optim.warmup_steps}) must be shorter than the run "
                          f"({decay} steps)")
    return RunPlan(t.micro_batch_size, seqs // per_micro_step, seqs, t.global_batch_tokens, steps_per_epoch,
                   total, decay)
