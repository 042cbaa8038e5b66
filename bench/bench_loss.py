"""The head and training loss alone: peak memory and time of the chunked head+loss against the fused
loss and F.cross_entropy on full logits, in the same run.

    python bench/bench_loss.py                                   # CPU: GPT-2-small shape, memory only
    python bench/bench_loss.py --tokens 2048 --rounds 5          # CPU: a smaller shape, timed too
    python bench/bench_loss.py --device cuda --dtype bf16        # GPU: memory and time
    python bench/bench_loss.py --device cuda --dtype bf16 --compile

One call = forward and backward of the mean cross-entropy of targets under softmax(hidden @ weight.T),
from fixed hidden states (tokens x d_model) and head weight (vocab x d_model), both leaves needing
gradients, under autocast for --dtype bf16/fp16 as the trainer runs. The default shape is GPT-2 small's
step: 16 x 1,024 tokens, vocab 50,257, d_model 768. The three ways:
- F.cross_entropy (baseline): the head's logits, then torch's loss on them (what nanoGPT does);
- fused_cross_entropy: the head's logits, then dist_llm.model.losses.fused_cross_entropy (the previous
  training loss: the logits' gradient computed in its forward);
- linear_cross_entropy (chunked): dist_llm.model.head_loss, head and loss chunk by chunk (the training loss).
Peak memory is what one call allocates above the inputs at its highest point (the two gradients
included, alike for all): on CUDA torch.cuda.max_memory_allocated; on a CPU the profiler's memory
accounting (profile_memory=True: every allocation and free, summed in time order). The results are
checked equal first, so a small wrong answer cannot win. Timing (--rounds, default 0 on a CPU, where one
call at this shape takes many seconds) alternates the three in rounds; best and median are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: sibling bench modules
from bench_model import DTYPES, bench_device  # noqa: E402
from peak_flops import sync  # noqa: E402

from dist_llm.model.head_loss import linear_cross_entropy  # noqa: E402
from dist_llm.model.losses import fused_cross_entropy  # noqa: E402

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "F.cross_entropy (baseline)": lambda h, w, t: F.cross_entropy(h @ w.T, t),
    "fused_cross_entropy": lambda h, w, t: fused_cross_entropy(h @ w.T, t),
    "linear_cross_entropy (chunked)": linear_cross_entropy,
}


def one_call(loss_fn, hidden, weight, targets, dtype):  # noqa: ANN001, ANN201
    hidden.grad = weight.grad = None
    with torch.autocast(hidden.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_fn(hidden, weight, targets)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def peak_bytes(call: Callable[[], object], device: torch.device) -> tuple[int, object]:
    """Peak bytes allocated by call() above what was allocated before it, and its result."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = call()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, result
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
    # Each allocation (+) and free (-) is a "[memory]" event: their running sum is the live total.
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())  # fmt: skip
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype (fp32: none)")
    parser.add_argument("--tokens", type=int, default=16 * 1024, help="rows: batch x context")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--compile", action="store_true", help="torch.compile each loss")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 10 CUDA, 0 CPU)")
    parser.add_argument("--calls", type=int, default=3, help="calls per timed round")
    args = parser.parse_args()
    try:
        device = bench_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    dtype = DTYPES[args.dtype]
    rounds = args.rounds if args.rounds is not None else (10 if device.type == "cuda" else 0)

    torch.manual_seed(0)
    hidden = torch.randn(args.tokens, args.d_model, device=device).requires_grad_()
    weight = (torch.randn(args.vocab, args.d_model, device=device) * 0.05).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), device=device)
    losses = {name: torch.compile(fn) if args.compile else fn for name, fn in LOSSES.items()}

    peak_mb, results = {}, {}
    for name, fn in losses.items():
        if args.compile or rounds:  # warm-up (and compilation), outside the measurement
            one_call(fn, hidden, weight, targets, dtype)
        call = lambda fn=fn: one_call(fn, hidden, weight, targets, dtype)  # noqa: E731
        nbytes, (loss, g_h, g_w) = peak_bytes(call, device)
        peak_mb[name] = nbytes / 2**20
        results[name] = (loss, g_h.clone(), g_w.clone())
    check_equal(results, dtype)

    times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(rounds):
        for name, fn in losses.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.calls):
                one_call(fn, hidden, weight, targets, dtype)
            sync(device)
            times[name].append((time.perf_counter() - start) / args.calls)

    on_gpu = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    how = "torch.cuda.max_memory_allocated" if on_gpu else "profiler memory accounting"
    print(f"device: {where} | torch {torch.__version__} | {args.tokens:,} tokens x vocab {args.vocab:,}, "
          f"d_model {args.d_model} | {args.dtype} | compile {args.compile} | peak memory: {how}")
    print()
    print("| head + loss | peak memory above inputs (MiB) | ms per forward+backward (best) | median |")
    print("|---|---|---|---|")
    for name in losses:
        best = f"{min(times[name]) * 1e3:.1f}" if times[name] else "n/a"
        median = f"{statistics.median(times[name]) * 1e3:.1f}" if times[name] else "n/a"
        print(f"| {name} | {peak_mb[name]:,.0f} | {best} | {median} |")
    base_name, fused_name, chunked_name = losses
    print()
    print(f"chunked loss peak memory: {peak_mb[chunked_name]:,.0f} MiB = "
          f"{peak_mb[chunked_name] / peak_mb[base_name]:.2f}x F.cross_entropy's, "
          f"{peak_mb[chunked_name] / peak_mb[fused_name]:.2f}x fused_cross_entropy's")
    if rounds:
        base, chunked = times[base_name], times[chunked_name]
        print(f"chunked / F.cross_entropy speed: {min(base) / min(chunked):.2f}x best round, "
              f"{statistics.median(base) / statistics.median(chunked):.2f}x median round")


def check_equal(results: dict, dtype: torch.dtype) -> None:
    """Every way's loss and gradients against the baseline's, within the dtype's rounding (both come
    from logits rounded to it: eps of the largest entry, or a few float32 ulps)."""
    eps = max(torch.finfo(dtype).eps, 16 * torch.finfo(torch.float32).eps)
    ref = next(iter(results.values()))
    for name, got in results.items():
        for label, a, b in zip(("loss", "hidden grad", "weight grad"), got, ref, strict=True):
            atol = 2 * eps * b.abs().max().item()
            message = lambda m, n=name, lb=label: f"{n}: {lb} differs from F.cross_entropy's: {m}"  # noqa: E731
            torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=atol, msg=message)


if __name__ == "__main__":
    main()
