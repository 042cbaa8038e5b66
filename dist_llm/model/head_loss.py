"""The training loss with the output head folded in: lm_head and cross-entropy, chunk by chunk of rows.

linear_cross_entropy(hidden, weight, targets) equals F.cross_entropy(hidden @ weight.T, targets) (a mean
over the rows not ignored, as a float32 scalar) but never holds the tokens x vocab logits whole. At the
GPT-2-small shape (16 x 1,024 tokens, vocab 50,257) those logits are 1.6 GB in bf16, and the float32
copies cross-entropy makes of them for its softmax and gradient another 3.3 GB each: the largest
tensors of the step, and passes over memory that dwarf the head's own matmul in time.

The idea is Liger-Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy: the gradient of a
mean NLL w.r.t. the logits is (softmax(logits) - onehot(target)) / count, known as soon as the logits
are. So the forward pass, for each chunk of rows, computes that chunk's logits (one matmul), its
log-sum-exp and picked logit in float32 (the loss), the logits' gradient in place, and from it the
chunk's share of the two gradients that matter, w.r.t. the hidden states (grad_logits @ weight) and the
head weight (grad_logits.T @ hidden, summed over chunks in float32). Backward only scales those two by
the incoming gradient. Peak memory is one chunk of logits (and its float32 softmax) instead of all of
them; the matmul FLOPs are the same as the plain path's (forward, and the two backward products).

Under autocast the matmuls run in the autocast dtype, as the plain head would; the softmax statistics
are float32. The loop is plain Python over a fixed number of chunks, so torch.compile traces it whole
(unrolled) and fuses each chunk's elementwise work.
"""

from __future__ import annotations

import torch

from dist_llm.model.losses import checked_ignore_index, flatten_rows

# Rows per chunk are chosen so that one chunk's logits hold about this many elements (64 MB in float32),
# with at most MAX_CHUNKS chunks: torch.compile unrolls the loop, so compile time grows with their number
# (GPT-2 small's 16 x 1,024 rows: 8 chunks of 2,048 rows, 0.4 GB of float32 logits each, against 1.6 GB
# for the whole logits in bf16 plus 3.3 GB for each float32 copy the plain loss makes).
CHUNK_ELEMENTS = 2**24
MAX_CHUNKS = 8


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int | None = -100,
    chunk_rows: int | None = None,
    pad_vocab_to: int = 1,
) -> torch.Tensor:
    """Mean cross-entropy of targets under softmax(hidden @ weight.T), float32 scalar.

    hidden: (..., d_model); weight: (vocab, d_model), the head's (out, in) layout; targets: integer
    tensor of shape hidden.shape[:-1]. Rows whose target equals ignore_index are left out of the sum
    and the count (all ignored gives NaN, like torch's). chunk_rows: rows per chunk (default: about
    CHUNK_ELEMENTS logits per chunk). pad_vocab_to > 1 multiplies by the weight padded with zero rows to
    a multiple of that many rows, so each chunk's logits rows start on aligned addresses (what
    TransformerLM does on CUDA); the padded columns are masked out of the softmax, so loss and gradients
    are unchanged. Gradients flow to hidden and weight; backward can run once per forward.
    """
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"linear_cross_entropy: weight shape {tuple(weight.shape)} must be (vocab, {hidden.shape[-1]})"
        )
    hidden, targets = flatten_rows(hidden, targets, "linear_cross_entropy",
                                   "hidden shape without the model dim")
    ignore_index = checked_ignore_index(targets, weight.shape[0], ignore_index, "linear_cross_entropy")
    device_type = hidden.device.type
    # The matmuls' dtype: what autocast would give the plain head, else the inputs' own.
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if chunk_rows is None:
        rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
        chunk_rows = max(rows, -(-hidden.shape[0] // MAX_CHUNKS))
    return _LinearCrossEntropy.apply(
        hidden, weight, targets, ignore_index, chunk_rows, pad_vocab_to, compute_dtype, wants_grad
    )


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # noqa: PLR0913
        ctx, hidden, weight, targets, ignore_index, chunk_rows, pad_vocab_to, compute_dtype, wants_grad
    ):  # noqa: ANN001, ANN205
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are chosen explicitly below
            vocab = weight.shape[0]
            h = hidden.to(compute_dtype)
            w = weight.to(compute_dtype)
            if pad := -vocab % pad_vocab_to:
                w = torch.nn.functional.pad(w, (0, 0, 0, pad))  # zero rows, masked below
            if ignore_index is None:
                keep = None
                rows_target = targets
                count = torch.tensor(float(targets.shape[0]), device=hidden.device)
            else:
                keep = targets != ignore_index
                rows_target = targets.masked_fill(~keep, 0)  # any valid id: the row's weight is 0
                count = keep.sum().float()
            nll_sum = torch.zeros((), device=hidden.device, dtype=torch.float32)
            grad_h = torch.empty_like(h) if wants_grad else None
            grad_w = None  # the first chunk's product, then the sum (no zero-filled vocab x d_model start)
            for start in range(0, h.shape[0], chunk_rows):
                rows = slice(start, min(start + chunk_rows, h.shape[0]))
                row_keep = None if keep is None else keep[rows]
                chunk_nll, grad_w = _chunk(h[rows], w, rows_target[rows], row_keep, count, vocab,
                                           grad_h[rows] if wants_grad else None, grad_w)  # fmt: skip
                nll_sum = nll_sum + chunk_nll
            loss = nll_sum / count
        ctx.grads = None
        if wants_grad:
            grads = grad_h.to(hidden.dtype), grad_w[:vocab].to(weight.dtype)
            if torch.compiler.is_compiling():
                ctx.save_for_backward(*grads)
            else:  # handed over in backward, not saved: autograd can then keep them without a copy
                ctx.grads = grads
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        if torch.compiler.is_compiling():
            grad_h, grad_w = ctx.saved_tensors
            grad_h, grad_w = grad_h * grad_loss, grad_w * grad_loss
        else:
            if ctx.grads is None:
                raise RuntimeError("linear_cross_entropy: backward ran twice through one forward; its "
                                   "gradient buffers are consumed by the first backward")
            (grad_h, grad_w), ctx.grads = ctx.grads, None
            # scaled in place: no second vocab x d_model buffer, and autograd takes them as they are
            grad_h, grad_w = grad_h.mul_(grad_loss), grad_w.mul_(grad_loss)
        return grad_h, grad_w, None, None, None, None, None, None


def _chunk(h_c, w, t_c, keep, count, vocab, grad_h_c, grad_w):  # noqa: ANN001, ANN202, PLR0913
    """One chunk of rows: returns its summed NLL and the float32 weight gradient so far. With grad_h_c
    given, writes its rows' hidden-state gradient there and adds its share of the weight gradient to
    grad_w (None before the first chunk: the share becomes it). A function, so the chunk's logits are
    freed on return, before the next chunk's are made."""
    logits_low = h_c @ w.T
    logits = logits_low.float()
    if w.shape[0] != vocab:
        logits[:, vocab:] = float("-inf")  # padded rows: exp gives 0, no probability, no gradient
    # log-sum-exp with the row max shifted out, exp written over the logits (no temporary): exps holds
    # exp(x - max), the softmax before its division by the row sum.
    row_max = logits.amax(dim=-1)
    picked = logits.gather(1, t_c[:, None]).squeeze(1)
    exps = logits.sub_(row_max[:, None]).exp_()
    row_sum = exps.sum(dim=-1)
    nll = row_sum.log() + row_max - picked
    if keep is not None:
        nll = nll * keep
    if grad_h_c is None:
        return nll.sum(), None
    # d loss / d logits = (softmax - onehot) * row_scale; row_scale = 1 / count, 0 for ignored rows
    row_scale = (1.0 / count).expand(row_sum.shape) if keep is None else keep / count
    grad = exps.mul_((row_scale / row_sum)[:, None])
    grad.scatter_add_(1, t_c[:, None], -row_scale[:, None])
    if grad.dtype != h_c.dtype:  # rounded into the half-precision logits' buffer: no new allocation
        grad = logits_low.copy_(grad)
    grad_h_c.copy_(grad @ w)
    if grad_w is None:  # the first chunk's share (float32: the product rounded as the plain head's is)
        return nll.sum(), (grad.T @ h_c).float()
    if grad.dtype == torch.float32:
        grad_w.addmm_(grad.T, h_c)  # no vocab x d_model temporary
    else:
        grad_w.add_(grad.T @ h_c)  # the product rounded as the plain head's is; summed in float32
    return nll.sum(), grad_w
