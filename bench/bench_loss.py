"""The training loss alone: dist_llm.losses.fused_cross_entropy against F.cross_entropy, same run.

    python bench/bench_loss.py                                    # CPU: 1,024 tokens x 10,000 vocab, fp32
    python bench/bench_loss.py --dtype bf16 --compile             # both compiled, bf16 logits
    python bench/bench_loss.py --device cuda --dtype bf16         # GPU: 16,384 x 50,257 (GPT-2 small)

One call = forward and backward of the mean cross-entropy over fixed logits (a leaf tensor, so nothing
else is timed). bf16/fp16 logits are fed as the trainer produces them, from an autocast region: torch's
loss then runs in float32, as under training. The baseline is F.cross_entropy, what nanoGPT and torch
users call; calls alternate between the two in rounds, and each one's best and median round are
printed with their ratio. On CUDA the peak memory each adds above the logits is printed too.
The two losses are checked equal first (loss and gradient), so a fast wrong answer cannot win.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: sibling bench modules
from bench_model import DTYPES, bench_device, torch_loss  # noqa: E402
from peak_flops import sync  # noqa: E402

from dist_llm.losses import fused_cross_entropy  # noqa: E402

DEFAULT_SHAPE = {"cpu": (1024, 10000), "cuda": (16 * 1024, 50257)}  # tokens x vocab


def one_call(loss_fn, logits: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # noqa: ANN001
    logits.grad = None
    with torch.autocast(logits.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_fn(logits, targets)
    loss.backward()
    return loss.detach()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="dtype of the logits")
    parser.add_argument("--tokens", type=int, default=None, help="rows of the logits (default by device)")
    parser.add_argument("--vocab", type=int, default=None, help="columns of the logits (default by device)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both losses")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5, help="calls per timed round")
    args = parser.parse_args()
    try:
        device = bench_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    dtype = DTYPES[args.dtype]
    tokens, vocab = DEFAULT_SHAPE.get(device.type, DEFAULT_SHAPE["cpu"])
    tokens, vocab = args.tokens or tokens, args.vocab or vocab

    torch.manual_seed(0)
    logits = (torch.randn(tokens, vocab, device=device) * 2).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=device)
    losses = {"F.cross_entropy (baseline)": torch_loss, "fused_cross_entropy": fused_cross_entropy}
    if args.compile:
        losses = {name: torch.compile(fn) for name, fn in losses.items()}

    results = {}
    for name, fn in losses.items():  # warm-up (and compilation), and the values to compare
        for _ in range(2):
            loss = one_call(fn, logits, targets, dtype)
        results[name] = (loss, logits.grad.clone())
    (ref_loss, ref_grad), (loss, grad) = results.values()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=2e-2, atol=1e-6)

    peak_mb = {}
    if device.type == "cuda":
        for name, fn in losses.items():
            logits.grad = None
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            one_call(fn, logits, targets, dtype)
            torch.cuda.synchronize(device)
            peak_mb[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20

    times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(args.rounds):
        for name, fn in losses.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.calls):
                one_call(fn, logits, targets, dtype)
            sync(device)
            times[name].append((time.perf_counter() - start) / args.calls)

    on_gpu = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where} | torch {torch.__version__} | logits {tokens:,} x {vocab:,} {args.dtype} | "
          f"compile {args.compile} | {args.rounds} alternating rounds of {args.calls} calls")  # fmt: skip
    print()
    print("| loss | ms per forward+backward (best) | median | peak memory above the logits (MB) |")
    print("|---|---|---|---|")
    for name, rounds in times.items():
        mem = f"{peak_mb[name]:,.0f}" if name in peak_mb else "n/a"
        print(f"| {name} | {min(rounds) * 1e3:.2f} | {statistics.median(rounds) * 1e3:.2f} | {mem} |")
    base, fused = times.values()
    print()
    print(f"fused / F.cross_entropy speed: {min(base) / min(fused):.2f}x best round, "
          f"{statistics.median(base) / statistics.median(fused):.2f}x median round")


if __name__ == "__main__":
    main()
