"""Cross-entropy: the reference written from its formula, and the fused one the trainer uses.

cross_entropy is loss = logsumexp(logits) - logits[target], averaged, built from plain tensor ops.

fused_cross_entropy gives the same loss and gradient with less memory traffic. torch's
F.cross_entropy keeps log_softmax(logits) for backward, then zero-fills a tokens x vocab buffer,
scatters into it, and runs log_softmax's backward into a third buffer (under autocast also first
copying bf16 logits to float32). The logits' gradient of a mean NLL is simply
(softmax(logits) - onehot(target)) / count, so the fused loss computes it during the forward pass, in
place in the buffer log_softmax wrote: one tokens x vocab buffer instead of three, two cheap passes
over it instead of a fill and a backward kernel. On a CPU every fresh buffer of that size is also
fresh pages from the OS, so the buffers saved are not just passes saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flatten(logits: torch.Tensor, targets: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., vocab) logits and (...) integer targets -> (N, vocab) and (N,), with clear errors."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"{name}: targets shape {tuple(targets.shape)} must equal logits shape without the "
            f"vocab dim {tuple(logits.shape[:-1])}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"{name}: targets must be integer class ids, got dtype {targets.dtype}")
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of targets under softmax(logits), as a float32 scalar.

    logits: (..., vocab) in any float dtype (computed in float32: bf16 logsumexp loses too much);
    targets: integer tensor of shape logits.shape[:-1]. Positions whose target equals ignore_index
    are left out of the sum and of the count (all ignored gives NaN, like torch's).
    Stability: subtracting the row max before exp keeps exp(.) <= 1, so huge logits cannot overflow.
    """
    logits, targets = _flatten(logits, targets, "cross_entropy")
    logits = logits.float()
    keep = None
    if ignore_index is not None:
        keep = targets != ignore_index
        targets = targets.masked_fill(~keep, 0)  # any valid index; these rows are zeroed below
    row_max = logits.amax(dim=-1, keepdim=True).detach()  # a constant shift: no gradient needed
    log_sum_exp = (logits - row_max).exp().sum(dim=-1).log() + row_max.squeeze(-1)
    target_logit = logits.gather(-1, targets[:, None]).squeeze(-1)
    nll = log_sum_exp - target_logit
    if keep is None:
        return nll.mean()
    return (nll * keep).sum() / keep.sum()


def fused_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """cross_entropy's loss and gradients (same arguments, float32 scalar), computed as the module
    docstring describes. Its backward can run once per forward (the gradient buffer is handed over,
    not copied): backward through it a second time, as retain_graph=True would allow, raises.

    Under torch.compile this is F.cross_entropy, which inductor already fuses into one pass each way.
    """
    logits, targets = _flatten(logits, targets, "fused_cross_entropy")
    if torch.compiler.is_compiling():
        ignored = -100 if ignore_index is None else ignore_index  # -100: F's default, not a token id
        return F.cross_entropy(logits.float(), targets, ignore_index=ignored)
    if targets.device.type == "cpu" and targets.numel():  # free on a CPU; on a GPU it would stall
        _check_target_range(targets, logits.shape[-1], ignore_index)
    # Inside forward grad mode is always off, so whether a gradient will be wanted is decided here.
    wants_grad = torch.is_grad_enabled() and logits.requires_grad
    return _FusedCrossEntropy.apply(logits, targets, ignore_index, wants_grad)


def _check_target_range(targets: torch.Tensor, vocab_size: int, ignore_index: int | None) -> None:
    valid = targets if ignore_index is None else targets[targets != ignore_index]
    if valid.numel() == 0:
        return
    lo, hi = int(valid.min()), int(valid.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"fused_cross_entropy: target id {bad} is outside the vocabulary [0, {vocab_size})")


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None, wants_grad: bool
    ) -> torch.Tensor:
        # Autocast off: it would first copy bf16 logits to float32; log_softmax(dtype=float32) reads
        # them as they are (fused into the kernel on CUDA).
        with torch.autocast(logits.device.type, enabled=False):
            log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
            keep = None if ignore_index is None else targets != ignore_index
            rows = targets if keep is None else targets.masked_fill(~keep, 0)  # ignored rows: any id
            picked = log_probs.gather(1, rows[:, None]).squeeze(1)
            if keep is None:
                loss = -picked.mean()
                row_scale = torch.full((), 1.0 / max(len(rows), 1), device=logits.device)
            else:
                count = keep.sum()
                loss = -(picked * keep).sum() / count
                row_scale = (keep / count)[:, None]  # 0 for ignored rows: no gradient
            ctx.grad_logits, ctx.row_scale, ctx.in_dtype = None, row_scale, logits.dtype
            if wants_grad:
                # d(mean NLL)/d logits = (softmax - onehot) * row_scale; the row_scale multiply waits for
                # backward, where it merges with the incoming gradient into one pass.
                grad = log_probs.exp_()
                grad.scatter_add_(1, rows[:, None], torch.full_like(picked, -1.0)[:, None])
                ctx.grad_logits = grad
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # noqa: ANN205
        grad = ctx.grad_logits
        if grad is None:
            raise RuntimeError(
                "fused_cross_entropy: backward ran twice through one forward; its gradient buffer is "
                "consumed by the first backward (use dist_llm.losses.cross_entropy with retain_graph)"
            )
        ctx.grad_logits = None
        grad.mul_(ctx.row_scale * grad_loss)
        return grad.to(ctx.in_dtype), None, None, None
