"""Where one training step of TransformerLM spends its time: torch.profiler, kernels grouped by kind.

    python bench/profile_step.py --config gpt2-small --dtype bf16 --compile   # on a GPU
    python bench/profile_step.py --config tiny                                # on a CPU

The step is bench_model.py's (forward, loss, backward, AdamW step on a fixed batch). After warm-up it
times a few plain steps, then profiles a few more and prints the share of device time (CUDA kernels on a
GPU, aten ops' self time on a CPU) taken by matmuls, attention, the optimizer and everything else (norms,
RoPE, SwiGLU's gate, the loss: elementwise and reduction kernels, which inductor fuses under --compile),
followed by the most expensive individual kernels. This says which part to work on when MFU is low.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: sibling bench modules
from bench_model import CONFIGS, DEFAULT_BATCH, DTYPES, Runner, bench_device, training_loss  # noqa: E402

from dist_llm.model import TransformerLM  # noqa: E402

# Substrings of kernel / op names, checked in this order (lower case).
KINDS = [
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient_attention")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "aten::mm", "aten::addmm", "aten::bmm", "sm90_")),
]


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "other (elementwise, norms, loss)"


def device_self_times(prof: torch.profiler.profile, on_gpu: bool) -> dict[str, float]:
    """name -> self time in microseconds: CUDA kernels on a GPU, aten ops on a CPU."""
    times: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if on_gpu:
            if "CUDA" not in str(getattr(event, "device_type", "")):
                continue  # a CPU-side op; its kernels are listed on their own
            if "#" in event.key:
                continue  # a GPU-side annotation such as "Optimizer.step#AdamW.step": spans kernels
            us = getattr(event, "self_device_time_total", None)
            if us is None:  # torch < 2.4 names it after CUDA
                us = event.self_cuda_time_total
        else:
            if not event.key.startswith("aten::"):
                continue
            us = event.self_cpu_time_total
        times[event.key] += us
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, choices=list(CONFIGS), help="default: gpt2-small on a "
                        "GPU, tiny on a CPU")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype (fp32: none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile forward+loss")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round, and steps profiled")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds before profiling (best kept)")
    parser.add_argument("--no-profile", action="store_true", help="only time the step")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="kernels listed individually")
    args = parser.parse_args()
    args.optim = "torch"  # what Runner reads: torch's AdamW with the trainer's kernel choice

    try:
        device = bench_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    on_gpu = device.type == "cuda"
    name = args.config or ("gpt2-small" if on_gpu else "tiny")
    cfg = CONFIGS[name]
    batch = args.batch_size or DEFAULT_BATCH[device.type][name]
    torch.manual_seed(0)
    model = TransformerLM.from_config(cfg, device=device)
    runner = Runner("dist_llm TransformerLM", model, training_loss, args, device, DTYPES[args.dtype])
    data = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]
    for _ in range(args.warmup):
        runner.step(x, y)
    for _ in range(args.rounds):
        runner.timed_round(x, y, args.steps)
    step_ms = min(runner.round_times) * 1e3
    tokens = batch * cfg.context_length
    flops = model.flops_per_token() * tokens
    where = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"{name} | {where} | torch {torch.__version__} | dtype {args.dtype} | compile {args.compile} | "
          f"batch {batch}x{cfg.context_length}")
    print(f"step: {step_ms:.2f} ms unprofiled, best of {args.rounds} rounds of {args.steps} "
          f"({tokens / step_ms * 1e3:,.0f} tokens/s, {flops / step_ms / 1e9:.1f} TFLOP/s)")  # fmt: skip
    if args.no_profile:
        return

    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            runner.step(x, y)
        if on_gpu:
            torch.cuda.synchronize(device)
    times = device_self_times(prof, on_gpu)
    total = sum(times.values())
    if total <= 0:
        raise SystemExit("the profiler recorded no kernel time; nothing to report")

    print(f"profiled {'kernel' if on_gpu else 'op'} time per step: {total / args.steps / 1e3:.2f} ms")
    by_kind: dict[str, float] = defaultdict(float)
    for key, us in times.items():
        by_kind[kind_of(key)] += us
    print()
    print("| kind | ms/step | share |")
    print("|---|---|---|")
    for kind, us in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {us / args.steps / 1e3:.2f} | {us / total:.1%} |")
    print()
    print("| kernel | kind | ms/step | share |")
    print("|---|---|---|---|")
    for key, us in sorted(times.items(), key=lambda item: -item[1])[: args.top]:
        short = key if len(key) <= 90 else key[:87] + "..."
        print(f"| {short} | {kind_of(key)} | {us / args.steps / 1e3:.3f} | {us / total:.1%} |")


if __name__ == "__main__":
    main()
