"""AdamW with the usual two parameter groups, and the learning rate at a given step."""

from __future__ import annotations

import functools

import torch

from dist_llm.config import OptimSection
from dist_llm.training.adamw import AdamW, cosine_lr


def build_optimizer(model: torch.nn.Module, cfg: OptimSection, device: torch.device) -> torch.optim.Optimizer:
    """Weight decay on matrices (projections, embeddings, lm_head) only, not on the RMSNorm gains.

    impl "torch": torch.optim.AdamW with the fastest kernel the device has (see adamw_kernel).
    impl "dist_llm": the project's own AdamW, written from the formula.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.impl == "dist_llm":
        return AdamW(groups, lr=cfg.max_lr, betas=betas, eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.max_lr, betas=betas, eps=cfg.eps, **adamw_kernel(device))


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """Keyword arguments that pick torch.optim.AdamW's kernel for parameters on `device`.

    Fused (one pass over each parameter, no temporaries) on CUDA and CPU, where torch has that kernel;
    on CPU that matters because the untied lm_head and the embedding are a quarter of a small model's
    parameters (bench/bench_model.py measures the whole step). foreach (batched ops) elsewhere, e.g. MPS.
    """
    if device.type == "cuda" or (device.type == "cpu" and _fused_adamw_on_cpu()):
        return {"fused": True}
    return {"foreach": True}


@functools.cache
def _fused_adamw_on_cpu() -> bool:
    """Whether this torch has the fused CPU kernel (added in torch 2.4; asked, not assumed)."""
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
    except RuntimeError:
        return False
    return True


def lr_at(step: int, cfg: OptimSection, decay_steps: int) -> float:
    """Linear warmup over warmup_steps, cosine decay to min_lr at decay_steps, then min_lr."""
    return cosine_lr(step, cfg.max_lr, cfg.min_lr, cfg.warmup_steps, decay_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
