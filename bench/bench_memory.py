"""Memory per rank: what the trainer's plan (dist_llm/training/memory.py) predicts against what is measured.

1. Model state (parameters, gradients, AdamW moments) per rank under fsdp and ddp, on 2 CPU ranks over
   gloo, counted exactly from each rank's local tensors after one optimizer step.
   Target: fsdp = ddp / world size (ratio 1.00 +- 0.05).
2. Activations kept for backward at the GPT-2-small shape (context 1024), counted exactly with autograd's
   saved-tensor hooks for one sequence on the device (CPU by default) and scaled to --batch (they are
   linear in it), with activation checkpointing none / selective / full, next to the plan's estimate.
   Target: full checkpointing keeps at least 3x less than none.
3. With --cuda: a real training step (bf16 autocast, fused loss, AdamW) at --batch x 1024: peak
   torch.cuda.max_memory_allocated against the plan (target: within 20%), and the step time with full
   checkpointing against none (target: at most 1.35x).

    python bench/bench_memory.py              # parts 1 and 2 (CPU, about a minute)
    python bench/bench_memory.py --cuda       # all three (one GPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dist_llm.model import ModelConfig, TransformerLM  # noqa: E402
from dist_llm.parallel.parallelize import Parallelism, parallelize  # noqa: E402
from dist_llm.training.memory import plan_memory  # noqa: E402

GPT2_SMALL = ModelConfig(vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12,
                         d_ff=2048)
STATE_MODEL = ModelConfig(vocab_size=8000, context_length=64, d_model=256, num_layers=4, num_heads=4,
                          d_ff=704)
MIB = 2**20


# ---------------------------------------------------------------- 1. model state per rank

def _local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def _state_on_rank(rank: int, world: int, port: int, strategy: str, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    par = parallelize(lambda: TransformerLM.from_config(STATE_MODEL), Parallelism(strategy=strategy), world,
                      torch.device("cpu"))
    optimizer = torch.optim.AdamW(par.model.parameters(), lr=1e-3)
    x = torch.randint(0, STATE_MODEL.vocab_size, (2, STATE_MODEL.context_length))
    par.train_step_module(x).float().mean().backward()
    optimizer.step()
    params = list(par.model.parameters())
    measured = {"parameters": sum(_local_bytes(p) for p in params),
                "gradients": sum(_local_bytes(p.grad) for p in params),
                "optimizer": sum(_local_bytes(v) for s in optimizer.state.values() for v in s.values()
                                 if isinstance(v, torch.Tensor) and v.dim() > 0)}
    if rank == 0:
        out[strategy] = measured
    dist.destroy_process_group()


def model_state_table(world: int = 2) -> None:
    import socket

    import torch.multiprocessing as mp

    manager = mp.Manager()
    out = manager.dict()
    for strategy in ("ddp", "fsdp"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_state_on_rank, args=(world, port, strategy, out), nprocs=world, join=True)
    with torch.device("meta"):
        skeleton = TransformerLM.from_config(STATE_MODEL)
    plan = plan_memory(skeleton, strategy="fsdp", shard_degree=world, micro_batch=2,
                       context=STATE_MODEL.context_length, compute_bytes=4)
    print(f"\n1. model state per rank, {skeleton.num_params():,} parameters, {world} CPU ranks (gloo), "
          "counted from the local tensors after one AdamW step")
    print(f"| | ddp MiB | fsdp MiB | fsdp / (ddp / {world}) | plan (fsdp) MiB |")
    print("|---|---|---|---|---|")
    for part in ("parameters", "gradients", "optimizer"):
        ddp, fsdp = out["ddp"][part], out["fsdp"][part]
        print(f"| {part} | {ddp / MIB:.2f} | {fsdp / MIB:.2f} | {fsdp / (ddp / world):.3f} | "
              f"{getattr(plan, part) / MIB:.2f} |")


# ---------------------------------------------------------------- 2. activations kept for backward

def _gpt2_small(activation_checkpointing: str, device: torch.device):
    torch.manual_seed(0)
    return parallelize(lambda: TransformerLM.from_config(GPT2_SMALL),
                       Parallelism(activation_checkpointing=activation_checkpointing), 1, device)


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass; weights (and views of
    them, such as the W.T a matmul keeps) are not activations and are left out."""
    total = 0
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in weights:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.float().mean().backward()  # outside: a checkpointed block's recomputation is not counted
    return total


def activation_table(batch: int, device: torch.device, dtype: torch.dtype | None) -> None:
    cfg = GPT2_SMALL
    x = torch.randint(0, cfg.vocab_size, (1, cfg.context_length), device=device)
    print(f"\n2. activations kept for backward, GPT-2-small shape, one sequence of {cfg.context_length} "
          f"measured on {device} ({dtype or torch.float32}), scaled to micro-batch {batch}")
    print("| activation checkpointing | kept for backward, measured GiB | plan GiB | measured / plan "
          "| none / this |")
    print("|---|---|---|---|---|")
    measured = {}
    for mode in ("none", "selective", "full"):
        torch.manual_seed(0)
        par = _gpt2_small(mode, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            measured[mode] = saved_bytes(par.train_step_module, x) * batch
        plan = plan_memory(par.model, strategy="single", shard_degree=1, micro_batch=batch,
                           context=cfg.context_length, compute_bytes=2 if dtype else 4,
                           activation_checkpointing=mode)
        print(f"| {mode} | {measured[mode] / 2**30:.2f} | {plan.activations / 2**30:.2f} | "
              f"{measured[mode] / plan.activations:.2f} | {measured['none'] / measured[mode]:.1f}x |")


# ---------------------------------------------------------------- 3. a real step on CUDA

def cuda_step_table(batch: int, steps: int = 8) -> None:
    device, cfg = torch.device("cuda"), GPT2_SMALL
    print(f"\n3. one training step on {torch.cuda.get_device_name(device)}: GPT-2-small, {batch} x "
          f"{cfg.context_length}, bf16 autocast, chunked head + loss, fused AdamW")
    print("| activation checkpointing | peak GiB | plan GiB | peak / plan | ms/step | time vs none |")
    print("|---|---|---|---|---|---|")
    baseline_ms = None
    for mode in ("none", "full"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        par = _gpt2_small(mode, device)
        optimizer = torch.optim.AdamW(par.model.parameters(), lr=1e-4, fused=True)
        x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), device=device)
        times = []
        for _ in range(steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = par.train_step_module(x, targets=x)  # the chunked head + loss, as in training
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        ms = 1000 * sorted(times[2:])[len(times[2:]) // 2]
        baseline_ms = baseline_ms or ms
        peak = torch.cuda.max_memory_allocated(device)
        plan = plan_memory(par.model, strategy="single", shard_degree=1, micro_batch=batch,
                           context=cfg.context_length, compute_bytes=2, activation_checkpointing=mode)
        total = plan.device_total
        print(f"| {mode} | {peak / 2**30:.2f} | {total / 2**30:.2f} | {peak / total:.2f} | {ms:.1f} | "
              f"{ms / baseline_ms:.2f}x |")
        del par, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="micro-batch the activations are scaled to")
    parser.add_argument("--cuda", action="store_true", help="also measure a real step on the GPU")
    parser.add_argument("--skip-state", action="store_true", help="skip part 1 (the 2-rank CPU run)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    if not args.skip_state:
        model_state_table()
    device = torch.device("cuda" if args.cuda else "cpu")
    activation_table(args.batch, device, torch.bfloat16 if args.cuda else None)
    if args.cuda:
        cuda_step_table(args.batch)


if __name__ == "__main__":
    main()
