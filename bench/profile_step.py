"""Where one training step of TransformerLM spends its time: torch.profiler, kernels grouped by kind.

    python bench/profile_step.py --config gpt2-small --dtype bf16 --compile   # on a GPU
    python bench/profile_step.py --config tiny                                # on a CPU

The step is bench_model.py's (forward, loss, backward, AdamW step on a fixed batch). After warm-up it
times a few plain steps, then profiles a few more and prints the share of device time (CUDA kernels on a
GPU, aten ops' self time on a CPU) taken by matmuls, attention, the optimizer and everything else (norms,
RoPE, SwiGLU's gate, the loss: elementwise and reduction kernels, which inductor fuses under --compile),
followed by the most expensive individual kernels. This says which part to work on when MFU is low.
It also prints each phase's time (forward + loss, backward, optimizer; the chunked loss computes its
gradients in the forward phase) and, on a CPU, how many aten ops one step runs. --model nanogpt
profiles the faithful nanoGPT baseline (bench/nanogpt_style.py) the same way, for comparison:

    python bench/profile_step.py --config tiny --threads 1
    python bench/profile_step.py --config tiny --threads 1 --model nanogpt
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: sibling bench modules
from bench_model import CONFIGS, DEFAULT_BATCH, DTYPES, Runner, bench_device, training_loss  # noqa: E402
from nanogpt_style import NanoGPTStyleLM  # noqa: E402
from peak_flops import sync  # noqa: E402

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


def phase_ms(runner: Runner, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, float]:
    """Milliseconds per step of each phase, best of `steps` steps (the device synchronised at each end)."""
    best: dict[str, float] = {}
    for _ in range(steps):
        sync(runner.device)
        last = time.perf_counter()

        def phase_done(name: str) -> None:
            nonlocal last
            sync(runner.device)
            now = time.perf_counter()
            best[name] = min(best.get(name, float("inf")), (now - last) * 1e3)
            last = now

        runner.step(x, y, phase_done)
    return best


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
    parser.add_argument("--model", choices=["ours", "nanogpt"], default="ours",
                        help="TransformerLM, or the faithful nanoGPT baseline of bench_model.py")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
    if args.model == "ours":
        model = TransformerLM.from_config(cfg, device=device)
    else:
        model = NanoGPTStyleLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers,
                               cfg.num_heads).to(device)  # fmt: skip
    runner = Runner(args.model, model, training_loss, args, device, DTYPES[args.dtype])
    data = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()  # as both trainers' loaders give them
    for _ in range(args.warmup):
        runner.step(x, y)
    for _ in range(args.rounds):
        runner.timed_round(x, y, args.steps)
    step_ms = min(runner.round_times) * 1e3
    tokens = batch * cfg.context_length
    flops = model.flops_per_token() * tokens
    where = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"{name} | model {args.model} | {where} ({torch.get_num_threads()} CPU threads) | torch "
          f"{torch.__version__} | dtype {args.dtype} | compile {args.compile} | "
          f"batch {batch}x{cfg.context_length}")
    print(f"step: {step_ms:.2f} ms unprofiled, best of {args.rounds} rounds of {args.steps} "
          f"({tokens / step_ms * 1e3:,.0f} tokens/s, {flops / step_ms / 1e9:.1f} TFLOP/s)")  # fmt: skip
    phases = phase_ms(runner, x, y, args.steps)
    print("phases (ms, best of " + str(args.steps) + " steps): "
          + ", ".join(f"{phase} {ms:.2f}" for phase, ms in phases.items()))  # fmt: skip
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
    if not on_gpu:
        ops = sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))
        print(f"aten ops per step: {ops / args.steps:,.0f}")
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
