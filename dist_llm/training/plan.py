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


@dataclass(frozen=True)
class BatchSplit:
    micro_batch_size: int  # sequences per rank per micro-step: the configured one, or one derived to fit
    accum_steps: int
    global_batch_seqs: int
    note: str | None  # says why the micro-batch differs from the configured one


def split_batch(cfg: RunConfig, world_size: int) -> BatchSplit:
    """How the global batch splits over the ranks: needs the world size only, so the trainer checks it
    before any data work. A configured micro-batch that does not divide a rank's share (e.g. the default
    32 with 2 or 4 ranks: 32 sequences in all) gives way to the largest one that does."""
    t, ctx = cfg.train, cfg.model.context_length
    seqs = t.global_batch_tokens // ctx
    if seqs % world_size:
        raise ConfigError(
            f"'train.global_batch_tokens' ({t.global_batch_tokens} = {seqs} sequences of {ctx} tokens) is "
            f"not divisible by the world size ({world_size}): every rank takes an equal share of each "
            f"batch; pick a global batch that is a multiple of {world_size} x {ctx} tokens")
    per_rank = seqs // world_size
    micro, note = t.micro_batch_size, None
    if per_rank % micro:
        micro = max(b for b in range(1, min(micro, per_rank) + 1) if per_rank % b == 0)
        note = (f"note: train.micro_batch_size={t.micro_batch_size} does not fit each rank's share of "
                f"the global batch ({seqs} sequences / {world_size} ranks = {per_rank}); using {micro} "
                f"per micro-step, {per_rank // micro} accumulation step(s): the same optimisation")
    return BatchSplit(micro, per_rank // micro, seqs, note)


def make_plan(cfg: RunConfig, world_size: int, train_windows: int, max_windows: int | None = None,
              say: Callable[[str], None] = print, split: BatchSplit | None = None) -> RunPlan:
    """max_windows: the most windows the data can give (a mixture with data.on_exhausted = "stop");
    split: the batch split already worked out before the data (else worked out here)."""
    t, ctx = cfg.train, cfg.model.context_length
    split = split or split_batch(cfg, world_size)
    seqs = split.global_batch_seqs
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
    return RunPlan(split.micro_batch_size, split.accum_steps, seqs, t.global_batch_tokens, steps_per_epoch,
                   total, decay)
