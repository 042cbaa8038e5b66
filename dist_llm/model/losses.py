"""Cross-entropy: the reference written from its formula, and the fused one the trainer uses.

cross_entropy is loss = logsumexp(logits) - logits[target], averaged, built from plain tensor ops.

fused_cross_entropy gives the same loss and gradient with less memory traffic, using that the logits'
gradient of a mean NLL is simply (softmax(logits) - onehot(target)) / count. It has two forms:

- Eager: torch's F.cross_entropy keeps log_softmax(logits) for backward, then zero-fills a tokens x
  vocab buffer, scatters into it, and runs log_softmax's backward into a third buffer (under autocast
  also first copying bf16 logits to float32). The eager form computes the gradient during the forward
  pass, in place in the buffer softmax wrote (the loss comes from the same softmax, see forward): one
  tokens x vocab buffer instead of three, and no fill or backward kernel. On a CPU every fresh buffer
  of that size is also fresh pages from the OS, so the buffers saved are not just passes saved.
- Under torch.compile: inductor fuses each line into one kernel, so what counts is what crosses from
  forward to backward. The compiled form saves only the logits (which exist anyway) and one float32
  logsumexp per row, and its backward is one elementwise pass (softmax from the logits and the
  logsumexp, minus the one-hot, times the scale) writing the gradient in the logits' dtype.
"""

from __future__ import annotations

import torch


def flatten_rows(logits: torch.Tensor, targets: torch.Tensor, name: str,
                 what: str = "logits shape without the vocab dim") -> tuple[torch.Tensor, torch.Tensor]:
    """(..., vocab) logits (or (..., d_model) hidden states: `what` names them in errors) and (...)
    integer targets -> (N, vocab) and (N,), with clear errors."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"{name}: targets shape {tuple(targets.shape)} must equal {what} {tuple(logits.shape[:-1])}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"{name}: targets must be integer class ids, got dtype {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"{name}: targets are on {targets.device} but logits on {logits.device}")
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()


def _row_weights(targets: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets with ignored rows pointing at id 0 (any valid id), and each row's weight in the mean:
    None for "all rows, 1 / N each", else keep / count (0 for ignored rows)."""
    if ignore_index is None:
        return targets, None
    keep = targets != ignore_index
    return targets.masked_fill(~keep, 0), keep / keep.sum()


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of targets under softmax(logits), as a float32 scalar.

    logits: (..., vocab) in any float dtype (computed in float32: bf16 logsumexp loses too much);
    targets: integer tensor of shape logits.shape[:-1]. Positions whose target equals ignore_index
    are left out of the sum and of the count (all ignored gives NaN, like torch's).
    Stability: subtracting the row max before exp keeps exp(.) <= 1, so huge logits cannot overflow.
    """
    logits, targets = flatten_rows(logits, targets, "cross_entropy")
    logits = logits.float()
    targets, weights = _row_weights(targets, ignore_index)
    row_max = logits.amax(dim=-1, keepdim=True).detach()  # a constant shift: no gradient needed
    log_sum_exp = (logits - row_max).exp().sum(dim=-1).log() + row_max.squeeze(-1)
    target_logit = logits.gather(-1, targets[:, None]).squeeze(-1)
    nll = log_sum_exp - target_logit
    return nll.mean() if weights is None else (nll * weights).sum()


def fused_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """cross_entropy's loss and gradients (same arguments, float32 scalar), computed as the module
    docstring describes: the eager form, or under torch.compile the compiled form. In eager mode its
    backward can run once per forward (the gradient buffer is handed over, not copied): backward
    through it a second time, as retain_graph=True would allow, raises.
    """
    logits, targets = flatten_rows(logits, targets, "fused_cross_entropy")
    if torch.compiler.is_compiling():
        return _CompiledCrossEntropy.apply(logits, targets, ignore_index)
    ignore_index = checked_ignore_index(targets, logits.shape[-1], ignore_index, "fused_cross_entropy")
    # Inside forward grad mode is always off, so whether a gradient will be wanted is decided here.
    wants_grad = torch.is_grad_enabled() and logits.requires_grad
    return _EagerCrossEntropy.apply(logits, targets, ignore_index, wants_grad)


def checked_ignore_index(targets: torch.Tensor, vocab_size: int, ignore_index: int | None,
                         name: str) -> int | None:
    """The ignore_index a loss needs, after checking the targets where that is free.

    On a CPU, outside torch.compile: a clear error (named for `name`) for a target id outside
    [0, vocab_size), ignored ones aside; and None when no target equals ignore_index, so the loss can
    skip its per-row weights (same loss, fewer ops). Elsewhere ignore_index unchanged and no check:
    reading min/max back to the host would stall a GPU step, and break a compiled graph."""
    if targets.device.type != "cpu" or torch.compiler.is_compiling() or targets.numel() == 0:
        return ignore_index
    return ignore_index if _check_target_range(targets, vocab_size, ignore_index, name) else None


def _check_target_range(targets: torch.Tensor, vocab_size: int, ignore_index: int | None, name: str) -> bool:
    """Raises for a target id outside [0, vocab_size) (ignored ones aside); returns whether any target
    equals ignore_index. Reads min/max back to the host."""
    lo, hi = (int(v) for v in torch.aminmax(targets))
    # ignore_index is outside [lo, hi] in the common case (-100 and no padding): then none is present
    has_ignored = (ignore_index is not None and lo <= ignore_index <= hi
                   and bool((targets == ignore_index).any()))  # fmt: skip
    if has_ignored:
        valid = targets[targets != ignore_index]
        if valid.numel() == 0:
            return True
        lo, hi = int(valid.min()), int(valid.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name}: target id {bad} is outside the vocabulary [0, {vocab_size})")
    return has_ignored


class _EagerCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None, wants_grad: bool
    ) -> torch.Tensor:
        # Autocast off: it would first copy bf16 logits to float32; (log_)softmax(dtype=float32) reads
        # them as they are (fused into the kernel on CUDA).
        with torch.autocast(logits.device.type, enabled=False):
            rows, weights = _row_weights(targets, ignore_index)
            ctx.grad_logits, ctx.in_dtype = None, logits.dtype
            if wants_grad:
                # softmax is the gradient's main term, and the picked log-probabilities follow from it
                # exactly: log p_t = x_t - max(x) + log(max p), as max p = 1 / sum(exp(x - max x)). That
                # log stays within [-log vocab, 0] however small p_t is. Two read-only max passes,
                # instead of log_softmax and then an exp pass writing the whole buffer again.
                probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
                target_logits = logits.gather(1, rows[:, None]).squeeze(1).float()
                picked = target_logits - logits.amax(dim=-1).float() + probs.amax(dim=-1).log()
                # d(mean NLL)/d logits = (softmax - onehot) * row_scale; the row_scale multiply waits for
                # backward, where it merges with the incoming gradient into one pass.
                probs.scatter_add_(1, rows[:, None], torch.full_like(picked, -1.0)[:, None])
                ctx.grad_logits = probs
            else:
                log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                picked = log_probs.gather(1, rows[:, None]).squeeze(1)
            if weights is None:
                loss = -picked.mean()
                ctx.row_scale = 1.0 / max(len(rows), 1)
            else:
                loss = -(picked * weights).sum()
                ctx.row_scale = weights[:, None]  # 0 for ignored rows: no gradient
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # noqa: ANN205
        grad = ctx.grad_logits
        if grad is None:
            raise RuntimeError(
                "fused_cross_entropy: backward ran twice through one forward; its gradient buffer is "
                "consumed by the first backward (use dist_llm.model.losses.cross_entropy with retain_graph)"
            )
        ctx.grad_logits = None
        grad.mul_(ctx.row_scale * grad_loss)
        return grad.to(ctx.in_dtype), None, None, None


class _CompiledCrossEntropy(torch.autograd.Function):
    """The form for torch.compile: written as whole-tensor expressions that inductor fuses, and
    saving (logits, logsumexp) rather than a tokens x vocab float32 tensor."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
        rows, weights = _row_weights(targets, ignore_index)
        logits32 = logits.float()
        log_sum_exp = torch.logsumexp(logits32, dim=-1)
        nll = log_sum_exp - logits32.gather(1, rows[:, None]).squeeze(1)
        ctx.save_for_backward(logits, log_sum_exp, rows, weights)
        return nll.mean() if weights is None else (nll * weights).sum()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # noqa: ANN205
        logits, log_sum_exp, rows, weights = ctx.saved_tensors
        probs = torch.exp(logits.float() - log_sum_exp[:, None])
        vocab_ids = torch.arange(logits.shape[1], device=logits.device)
        grad = torch.where(vocab_ids[None, :] == rows[:, None], probs - 1.0, probs)
        scale = grad_loss / logits.shape[0] if weights is None else grad_loss * weights[:, None]
        return (grad * scale).to(logits.dtype), None, None
