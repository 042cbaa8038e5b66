"""Cross-entropy written from its formula: loss = logsumexp(logits) - logits[target], averaged."""

from __future__ import annotations

import torch


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of targets under softmax(logits), as a float32 scalar.

    logits: (..., vocab) in any float dtype (computed in float32: bf16 logsumexp loses too much);
    targets: integer tensor of shape logits.shape[:-1]. Positions whose target equals ignore_index
    are left out of the sum and of the count (all ignored gives NaN, like torch's).
    Stability: subtracting the row max before exp keeps exp(.) <= 1, so huge logits cannot overflow.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: targets shape {tuple(targets.shape)} must equal logits shape without the "
            f"vocab dim {tuple(logits.shape[:-1])}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"cross_entropy: targets must be integer class ids, got dtype {targets.dtype}")
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1).long()
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
