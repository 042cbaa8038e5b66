"""FSDP on one device: its overhead against the unwrapped model, and a big model's throughput.

Each row is a full training step (forward, chunked head + loss, backward, clipping, fused AdamW) of a
model laid out by dist_llm.parallel.parallelize as the trainer does it, in one process: "unwrapped" is
the model as a single process runs it; "fsdp" is FSDP2 on a 1-rank group (every all-gather and
reduce-scatter is a local copy, so the difference is FSDP's own bookkeeping, casts and copies: the floor
of its cost on many GPUs).
Rows alternate in rounds; the median round counts. MFU is against the datasheet peak (bench/peak_flops.py).

Targets (on an H100/H200, bf16, compiled):
  gpt2-small: fsdp / unwrapped step time at most 1.05 (FSDP overhead at most 5%).
  llama-1b: fsdp at least 55% MFU at batch 8 x 2048; activation checkpointing's cost reported beside it.

    python bench/bench_fsdp.py --config gpt2-small --dtype bf16 --compile          # on a GPU
    python bench/bench_fsdp.py --config llama-1b --dtype bf16 --compile --with-ac  # on a GPU
    python bench/bench_fsdp.py --config tiny --device cpu                          # a smoke run
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_flops import datasheet_peak, sync  # noqa: E402

from dist_llm.model import ModelConfig, TransformerLM  # noqa: E402
from dist_llm.parallel.parallelize import Parallelism, parallelize  # noqa: E402

CONFIGS = {  # name: (model, micro-batch)
    "tiny": (ModelConfig(vocab_size=2048, context_length=128, d_model=128, num_layers=4, num_heads=4,
                         d_ff=384), 8),
    "gpt2-small": (ModelConfig(vocab_size=50257, context_length=1024, d_model=768, num_layers=12,
                               num_heads=12, d_ff=2048), 16),
    "llama-1b": (ModelConfig(vocab_size=32000, context_length=2048, d_model=2048, num_layers=16,
                             num_heads=32, d_ff=8192), 8),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


class Row:
    def __init__(self, name: str, cfg: ModelConfig, par: Parallelism, device: torch.device,
                 dtype: torch.dtype | None) -> None:
        torch.manual_seed(0)
        self.name, self.device, self.dtype = name, device, dtype
        self.par = parallelize(lambda: TransformerLM.from_config(cfg), par, 1, device,
                               shard_one_rank=par.strategy == "fsdp")
        fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
        self.optimizer = torch.optim.AdamW(self.par.model.parameters(), lr=1e-4, **fused)
        self.times: list[float] = []

    def step(self, x: torch.Tensor) -> None:
        enabled = self.dtype is not None
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=enabled):
            loss = self.par.train_step_module(x, targets=x)  # the chunked head + loss, as in training
        loss.backward()
        self.par.clip_grad_norm_(1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed(self, x: torch.Tensor, steps: int) -> None:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(x)
        sync(self.device)
        self.times.append((time.perf_counter() - start) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS), default="gpt2-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--with-ac", action="store_true", help="also fsdp with full activation checkpointing")
    parser.add_argument("--skip-unwrapped", action="store_true",
                        help="no unwrapped row (a big model: fsdp's tokens/s and MFU only; ratios vs fsdp)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    import torch.distributed as dist

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = Path(tempfile.mkdtemp()) / "store"  # a 1-rank group: no port needed
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}",
                            rank=0, world_size=1)
    cfg, batch = CONFIGS[args.config]
    batch = args.batch_size or batch
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), device=device)
    layouts = {"unwrapped": Parallelism(compile=args.compile), "fsdp": Parallelism(strategy="fsdp",
                                                                                  compile=args.compile)}
    if args.skip_unwrapped:
        del layouts["unwrapped"]
    if args.with_ac:
        layouts["fsdp + full checkpointing"] = Parallelism(strategy="fsdp", compile=args.compile,
                                                           activation_checkpointing="full")
    rows = []
    for name, par in layouts.items():
        row = Row(name, cfg, par, device, dtype)
        for _ in range(args.warmup):
            row.step(x)
        rows.append(row)
        if device.type == "cuda" and len(layouts) > 2:  # the big config: one model in memory at a time
            row.timed(x, args.steps * args.rounds)
            row.par = row.optimizer = None
            torch.cuda.empty_cache()
    for _ in range(args.rounds):  # alternating rounds: slow drifts of the machine hit every row alike
        for row in rows:
            if row.par is not None:
                row.timed(x, args.steps)
    sheet = datasheet_peak(device, dtype or torch.float32)
    flops_per_token = TransformerLM.from_config(cfg, device="meta").flops_per_token()
    tokens = batch * cfg.context_length
    base = statistics.median(rows[0].times)
    print(f"{args.config}: batch {batch} x {cfg.context_length}, {args.dtype}, compile={args.compile}, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"| layout | ms/step | tokens/s | step time vs {rows[0].name} | MFU |")
    print("|---|---|---|---|---|")
    for row in rows:
        ms = statistics.median(row.times)
        mfu = f"{flops_per_token * tokens / ms / sheet[1]:.1%}" if sheet else "n/a"
        print(f"| {row.name} | {1000 * ms:.1f} | {tokens / ms:,.0f} | {ms / base:.3f} | {mfu} |")
    dist.destroy_process_group()
    shutil.rmtree(store.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
