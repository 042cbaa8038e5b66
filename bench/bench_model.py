"""Training-step throughput of TransformerLM against a nanoGPT-style GPT, measured in the same run.

One step = forward, loss, backward, optimizer step, on a fixed random batch (data loading excluded).
Both models get the same width, depth, heads, context, batch, dtype, compile setting and optimizer
(torch.optim.AdamW, fused on CUDA, or --optim ours for dist_llm.optim.AdamW); each uses its own loss
(ours: dist_llm.losses.cross_entropy; baseline: F.cross_entropy). Rounds alternate between the two models
so a drifting machine slows both alike, and the best round of each is reported: load from other processes
only ever slows a round down, so the fastest round is the least disturbed estimate (as timeit does).

    python bench/bench_model.py                                     # CPU default: tiny + tinystories, fp32
    python bench/bench_model.py --config gpt2-small --dtype bf16 --compile   # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: sibling bench modules
from nanogpt_style import NanoGPTStyleLM  # noqa: E402
from peak_flops import datasheet_peak, measured_matmul_peak  # noqa: E402

from dist_llm.losses import cross_entropy  # noqa: E402
from dist_llm.model import ModelConfig, TransformerLM  # noqa: E402
from dist_llm.optim import AdamW  # noqa: E402

CONFIGS = {
    "tiny": ModelConfig(
        vocab_size=1024, context_length=128, d_model=128, num_layers=2, num_heads=4, d_ff=344
    ),
    # CS336 assignment 1 TinyStories model
    "tinystories": ModelConfig(
        vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344
    ),
    # GPT-2 small shape; d_ff = 8/3 * 768 rounded so SwiGLU has the parameters of a 4x GELU MLP
    "gpt2-small": ModelConfig(
        vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048
    ),
}
# Default micro-batch (sequences) per device: small on CPU so the whole CPU run takes a couple of minutes.
DEFAULT_BATCH = {
    "cpu": {"tiny": 8, "tinystories": 4, "gpt2-small": 1},
    "cuda": {"tiny": 64, "tinystories": 64, "gpt2-small": 16},
}
PEAK_SAMPLES: list[float] = []  # matmul peaks sampled between timed rounds
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model with its optimizer and a (possibly compiled) forward+loss function."""

    def __init__(self, name, model, loss_fn, args, device, dtype) -> None:
        self.name, self.model, self.device, self.dtype = name, model, device, dtype
        params = list(model.parameters())
        if args.optim == "ours":
            self.opt = AdamW(params, lr=1e-4, weight_decay=0.1)
        else:
            fused = device.type == "cuda"
            self.opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=fused or None)
        forward_loss = lambda x, y: loss_fn(model(x), y)
        self.forward_loss = torch.compile(forward_loss) if args.compile else forward_loss
        self.round_times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.forward_loss(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def timed_round(self, x, y, steps: int) -> None:
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.step(x, y)
        _sync(self.device)
        self.round_times.append((time.perf_counter() - start) / steps)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.name}: loss became {loss.item()} during the benchmark")


def bench_config(name: str, args, device: torch.device, dtype: torch.dtype, sheet) -> list[dict]:
    cfg = CONFIGS[name]
    batch = args.batch_size or DEFAULT_BATCH[device.type][name]
    torch.manual_seed(0)
    ours = TransformerLM.from_config(cfg, device=device)
    base = NanoGPTStyleLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads)
    runners = [
        Runner("dist_llm TransformerLM", ours, cross_entropy, args, device, dtype),
        Runner("nanoGPT-style baseline", base.to(device), _torch_cross_entropy, args, device, dtype),
    ]
    data = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]
    for runner in runners:  # warmup (includes compilation)
        for _ in range(args.warmup):
            runner.step(x, y)
    for _ in range(args.rounds):
        for runner in runners:
            runner.timed_round(x, y, args.steps)
        # a short peak measurement between rounds: the best one is kept (see main)
        PEAK_SAMPLES.append(measured_matmul_peak(device, dtype, min_seconds=0.2))
    rows = []
    for runner in runners:
        sec = min(runner.round_times)
        tok_s = batch * cfg.context_length / sec
        achieved = runner.model.flops_per_token() * tok_s
        rows.append(dict(
            config=name, model=runner.name, batch=batch, ctx=cfg.context_length, ms_step=sec * 1e3,
            tok_s=tok_s, tflops=achieved / 1e12, mfu_sheet=achieved / sheet[1] if sheet
            else None, params_m=runner.model.num_params() / 1e6,
        ))  # fmt: skip
    del runners
    if device.type == "cuda":
        rows[0]["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache()
    return rows


def _torch_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), targets.flatten())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help=f"comma list from {list(CONFIGS)}")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype (fp32: none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile forward+loss of both models")
    parser.add_argument("--optim", choices=["torch", "ours"], default="torch")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds per model")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    on_gpu = device.type == "cuda"
    names = (args.config or ("gpt2-small" if on_gpu else "tiny,tinystories")).split(",")
    for name in names:
        if name not in CONFIGS:
            parser.error(f"unknown --config {name!r}; choose from {list(CONFIGS)}")
    args.steps = args.steps or (10 if on_gpu else 1)
    args.rounds = args.rounds or (3 if on_gpu else 7)
    args.warmup = args.warmup or (3 if on_gpu else 1)
    dtype = DTYPES[args.dtype]
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32 tensor cores, as trainers do
        torch.backends.cudnn.allow_tf32 = True

    peak = measured_matmul_peak(device, dtype)
    sheet = datasheet_peak(device, dtype)
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where} | torch {torch.__version__} | dtype {args.dtype} | compile {args.compile} | "
          f"optimizer {args.optim} AdamW")  # fmt: skip
    print(f"measured {args.dtype} matmul peak: {peak / 1e12:.3f} TFLOP/s"
          + (f" | datasheet peak ({sheet[0]}): {sheet[1] / 1e12:.0f} TFLOP/s" if sheet else ""))  # fmt: skip

    runs = [bench_config(name, args, device, dtype, sheet) for name in names]
    # On a shared machine one peak measurement can land in a busy moment and inflate every MFU, so
    # the peak is also sampled between rounds and the best sample is used.
    peak = max([peak, *PEAK_SAMPLES])
    print(f"matmul peak used for MFU (best of {1 + len(PEAK_SAMPLES)} samples): {peak / 1e12:.3f} TFLOP/s")
    rows = [dict(row, mfu=row["tflops"] * 1e12 / peak) for run in runs for row in run]
    print()
    print("| config | model | params (M) | batch x ctx | ms/step | tokens/s | TFLOP/s | MFU (measured peak) |"
          " MFU (datasheet) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sheet_mfu = f"{r['mfu_sheet']:.1%}" if r["mfu_sheet"] is not None else "n/a"
        print(f"| {r['config']} | {r['model']} | {r['params_m']:.1f} | {r['batch']}x{r['ctx']} | "
              f"{r['ms_step']:.1f} | {r['tok_s']:,.0f} | {r['tflops']:.3f} | {r['mfu']:.1%} | {sheet_mfu} |")
    print()
    for ours, base in zip(rows[::2], rows[1::2], strict=True):
        ratio = ours["tok_s"] / base["tok_s"]
        print(f"{ours['config']}: tokens/s ours / nanoGPT-style baseline = {ratio:.2f}x")
    if on_gpu:
        print(f"peak GPU memory: {max(r.get('peak_mem_gb', 0) for r in rows):.1f} GiB")


if __name__ == "__main__":
    main()
