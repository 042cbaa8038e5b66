"""RMSNorm forward + backward on a CPU: the model's hand-written CPU path against torch's own forms.

    python bench/bench_norm.py                          # the tiny and TinyStories models' rows, fp32
    python bench/bench_norm.py --shapes 1024,128 --dtype bf16

Each shape is rows,d_model. The contenders, all computing x / sqrt(mean(x^2) + eps) * w in float32:
  model     RMSNorm(fused=True): dist_llm/model/layers.py's _CpuRMSNorm, what training runs on a CPU
  rms_norm  torch.nn.functional.rms_norm, with autograd's backward through its composite ops
  formula   RMSNorm(fused=False), the from-scratch formula
and torch's LayerNorm (no bias), a different function, as the yardstick of one fused native kernel.
Rounds alternate between them; the best and the median round of each are printed, in microseconds per
forward + backward (1 thread by default, CPU-time clock).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dist_llm.model.layers import RMSNorm

SHAPES = ["1024,128", "1024,512"]  # bench_model.py's CPU batches: tiny 8 x 128 rows, TinyStories 4 x 256
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class TorchRMSNorm(RMSNorm):
    """The model's RMSNorm computed by torch.nn.functional.rms_norm on any device (what the model does
    off a CPU), so autograd differentiates torch's composite ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


def contenders(d_model: int, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    norms = {"model": RMSNorm(d_model, fused=True), "rms_norm": TorchRMSNorm(d_model),
             "formula": RMSNorm(d_model, fused=False), "LayerNorm": torch.nn.LayerNorm(d_model, bias=False)}
    return {name: norm.to(dtype) for name, norm in norms.items()}


def timed_round(norm: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, steps: int) -> float:
    start = time.process_time()
    for _ in range(steps):
        norm(x).backward(grad)
        x.grad = norm.weight.grad = None
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="rows,d_model each")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=100, help="forward+backward calls per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    print(f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, {args.dtype}, CPU-time "
          f"clock, {args.rounds} alternating rounds of {args.steps} calls; us per forward + backward, "
          f"best (median)")  # fmt: skip
    names = list(contenders(8, dtype))
    print("\n| rows,d_model | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for shape in args.shapes:
        rows, d_model = (int(n) for n in shape.split(","))
        gen = torch.Generator().manual_seed(0)
        x = (torch.randn(rows, d_model, generator=gen) * 2).to(dtype).requires_grad_()
        grad = torch.randn(rows, d_model, generator=gen).to(dtype)
        norms = contenders(d_model, dtype)
        times: dict[str, list[float]] = {name: [] for name in norms}
        for norm in norms.values():  # warm-up
            timed_round(norm, x, grad, 3)
        for _ in range(args.rounds):
            for name, norm in norms.items():
                times[name].append(timed_round(norm, x, grad, args.steps))
        cells = [f"{min(t) * 1e6:.0f} ({statistics.median(t) * 1e6:.0f})" for t in times.values()]
        print(f"| {shape} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
