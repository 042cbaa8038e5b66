"""Full training loop vs the bare training step, same config, same process: tokens/s and their ratio.

    python bench/bench_train_loop.py [--steps N] [--repeats R] [--config FILE] [--section.key=value ...]

Baseline ("bare step"): the model, optimizer, precision, micro-batch and accumulation of the config,
stepping on one fixed batch (real windows of the run's data) already on the device: forward, backward,
clipping, optimizer step, and nothing else (no data loading, logging, evaluation, checkpoints, host syncs).
Measured ("full loop"): `dist_llm.train.train()` with the same config, timed from its own metrics.jsonl
between the first and last logged steps, so it includes data loading, logging, the progress bar and
periodic checkpoints (set by --checkpoint.interval; default here: every 20 steps), but not setup, the
step-0 evaluation or the final outputs. Periodic evaluation is switched off (it is reported apart).
Target: full / bare >= 0.95. Bare and full runs alternate R times; the headline is the median of the R
paired ratios (each pair ran back to back, so slow drift in machine load cancels), with the ratio of the
best runs next to it. On a CPU, --threads sets torch's intra-op threads (fewer threads are far less
disturbed by other processes on a small shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dist_llm.config import RunConfig, parse_args
from dist_llm.model import ModelConfig, TransformerLM
from dist_llm.parallel.distributed import select_device
from dist_llm.training import precision
from dist_llm.training.optimizer import build_optimizer
from dist_llm.training.plan import make_plan


def real_batch(cfg: RunConfig, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first windows of the run's own token files (prepared, or reused from the cache), so both
    measurements see the same token statistics."""
    from dist_llm.data import MemmapTokens
    from dist_llm.training.pipeline import prepare_data

    tokenizer, data_dir = prepare_data(cfg)
    windows = MemmapTokens(data_dir, "train", cfg.model.context_length, tokenizer.fingerprint)
    x = torch.from_numpy(windows.windows(np.arange(batch_size))).to(device)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def bare_step_tokens_per_s(cfg: RunConfig, steps: int) -> float:
    warmup = cfg.log.interval  # the full loop's first logged window (its warm-up) is not timed either
    device = select_device(cfg.dist.device)
    torch.manual_seed(cfg.run.seed)
    model = TransformerLM.from_config(ModelConfig.from_dict(dataclasses.asdict(cfg.model))).to(device)
    train_model = torch.compile(model) if cfg.train.compile else model
    optimizer = build_optimizer(model, cfg.optim, device)
    scaler = precision.grad_scaler(cfg.train.precision, device)
    autocast = precision.autocast(cfg.train.precision, device)
    plan = make_plan(cfg, 1, train_windows=10**9)
    inputs, targets = real_batch(cfg, plan.micro_batch_size, device)
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf

    def step() -> None:
        for _ in range(plan.accum_steps):
            with autocast:
                loss = train_model(inputs, targets=targets)  # the chunked head + loss, as train.py
            scaler.scale(loss / plan.accum_steps).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * plan.global_batch_tokens / (time.perf_counter() - started)


def full_loop_tokens_per_s(argv: list[str], run_dir: Path) -> float:
    from dist_llm.train import train

    cfg = parse_args([*argv, f"--run.dir={run_dir}"])
    train(cfg)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train_loss" in r]
    first, last = logged[0], logged[-1]  # the first window holds the warm-up steps: left out
    return (last["tokens"] - first["tokens"]) / (last["time_s"] - first["time_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args, overrides = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = ["--eval.interval=0", "--eval.sample_tokens=0", "--log.progress_bar=false",
                "--checkpoint.interval=20", "--log.interval=10"]
    argv = [*defaults, *overrides, f"--train.max_steps={args.steps}", "--optim.warmup_steps=1",
            "--optim.decay_steps=0"]
    cfg = parse_args(argv)
    bare, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare.append(bare_step_tokens_per_s(cfg, args.steps))
            full.append(full_loop_tokens_per_s(argv, Path(tmp) / f"run{i}"))
    pair_ratios = [f / b for f, b in zip(full, bare, strict=True)]
    ratio = statistics.median(pair_ratios)
    device = select_device(cfg.dist.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}, {torch.get_num_threads()} threads"
    print(f"\nmodel d_model={cfg.model.d_model} layers={cfg.model.num_layers} ctx={cfg.model.context_length} "
          f"vocab={cfg.model.vocab_size}; global batch {cfg.train.global_batch_tokens} tokens; "
          f"{cfg.train.precision}; {name}; {args.steps} steps x {args.repeats} repeats")
    print("| repeat | bare step tokens/s (baseline) | full loop tokens/s | full / bare |")
    print("|---|---|---|---|")
    for i, (b, f, r) in enumerate(zip(bare, full, pair_ratios, strict=True)):
        print(f"| {i + 1} | {b:,.0f} | {f:,.0f} | {r:.3f} |")
    verdict = "met" if ratio >= 0.95 else "NOT met"
    print(f"| median of pairs | {statistics.median(bare):,.0f} | {statistics.median(full):,.0f} | "
          f"**{ratio:.3f}** (target >= 0.95: {verdict}) |")
    print(f"| best runs | {max(bare):,.0f} | {max(full):,.0f} | {max(full) / max(bare):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
