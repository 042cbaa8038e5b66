"""Causal attention forward + backward on a CPU: torch's SDPA (its CPU flash kernel) against the explicit
baddbmm-softmax-bmm path the model takes for short bf16 contexts (dist_llm/model/attention.py).

    python bench/bench_attention.py                      # the shapes behind EXPLICIT_MAX_KEYS, bf16 and fp32
    python bench/bench_attention.py --shapes 8,4,128,32 4,16,256,32 --dtype bf16

Each shape is B,H,T,D, with q, k, v laid out as the model's head split gives them (a transposed view).
Rounds alternate between the two; the best and the median round of each are printed, and their ratio
(above 1: the explicit path is faster). The model's routing rule (explicit_causal_fits) is printed beside
each row, so a change of the rule can be checked against the figures that justify it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dist_llm.model.attention import explicit_causal_attention, explicit_causal_fits

SHAPES = ["8,4,128,32", "4,16,256,32", "2,12,512,64", "1,12,1024,64", "1,8,2048,64"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def timed_round(fn, q, k, v, grad, steps: int) -> float:  # noqa: ANN001
    start = time.process_time()
    for _ in range(steps):
        fn(q, k, v).backward(grad)
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="B,H,T,D each (default: %(default)s)")
    parser.add_argument("--dtype", choices=[*DTYPES, "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="forward+backward calls per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    print(f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, CPU-time clock, "
          f"{args.rounds} alternating rounds of {args.steps} calls")  # fmt: skip
    print("\n| B,H,T,D | dtype | SDPA ms | explicit ms | SDPA / explicit (best, median) "
          "| model takes explicit |")
    print("|---|---|---|---|---|---|")
    for dtype_name in dtypes:
        for shape in args.shapes:
            b, h, t, d = (int(n) for n in shape.split(","))
            gen = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(b, t, h, d, generator=gen).to(DTYPES[dtype_name]).transpose(1, 2)
                       .requires_grad_() for _ in range(3))  # fmt: skip
            grad = torch.randn(q.shape, generator=gen).to(q.dtype)
            times: dict[str, list[float]] = {"sdpa": [], "explicit": []}
            fns = {"sdpa": sdpa, "explicit": explicit_causal_attention}
            for fn in fns.values():  # warm-up
                timed_round(fn, q, k, v, grad, 1)
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    times[name].append(timed_round(fn, q, k, v, grad, args.steps))
            best = min(times["sdpa"]) / min(times["explicit"])
            median = statistics.median(times["sdpa"]) / statistics.median(times["explicit"])
            print(f"| {shape} | {dtype_name} | {min(times['sdpa']) * 1e3:.1f} | "
                  f"{min(times['explicit']) * 1e3:.1f} | {best:.2f}x, {median:.2f}x | "
                  f"{explicit_causal_fits(q.detach())} |")  # fmt: skip


if __name__ == "__main__":
    main()
