"""One optimizer step's forward and backward passes: gradient accumulation over micro-batches.

Gradients are synchronised on the last micro-step only (ddp: no_sync; fsdp/hsdp: no reduce-scatter)
so an accumulation of A micro-steps costs one round of communication, not A.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from dist_llm.parallel.parallelize import ParallelModel


def forward_backward(par: ParallelModel, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                     accum_steps: int, autocast: AbstractContextManager, scaler: torch.amp.GradScaler,
                     doc_ids: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Accumulate the gradients of one global batch; return its mean loss (a device scalar: reading it
    would stall the device, so the caller reads it once, with the gradient norm).

    doc_ids: with model.doc_masking, the document numbers of a batch's tokens (attention stays inside
    each document)."""
    step_loss = torch.zeros(())  # moved to the loss's device at the first micro-step
    for micro in range(accum_steps):
        x, y = next_batch()
        masking = {"doc_ids": doc_ids(x)} if doc_ids is not None else {}
        with par.gradient_sync(micro == accum_steps - 1):  # covers forward and backward
            with autocast:
                # The head and the loss computed together, chunk by chunk (dist_llm/model/head_loss.py): the
                # tokens x vocab logits never exist whole.
                loss = par.train_step_module(x, targets=y, **masking)
            # Each micro-batch is 1/accum_steps of the batch (and ranks are averaged), so the summed
            # gradients equal those of one big batch.
            scaler.scale(loss / accum_steps).backward()
        step_loss = step_loss.to(loss.device) + loss.detach() / accum_steps
    return step_loss
