"""The basic layers, each written from its formula: Linear, Embedding, RMSNorm, SwiGLU, silu, softmax.

Embedding, RMSNorm and SwiGLU also have a fused path (fused=True, what training uses) that calls torch's
kernels for the same math: fewer passes over the activations, fewer tensors saved for backward. Tests
hold the two paths equal.

No precision code lives here beyond RMSNorm's float32 statistics: mixed precision comes from
torch.autocast applied by the caller, which casts the matmuls below to bf16/fp16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """softmax(x)_i = exp(x_i - max(x)) / sum_j exp(x_j - max(x)); subtracting the max keeps exp finite."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    exp = torch.exp(shifted)
    return exp / exp.sum(dim=dim, keepdim=True)


def silu(x: torch.Tensor) -> torch.Tensor:
    """silu(x) = x * sigmoid(x). torch.sigmoid is stable for large |x| (no exp overflow)."""
    return x * torch.sigmoid(x)


def eager_on_cpu(x: torch.Tensor) -> bool:
    """Whether x is on a CPU outside torch.compile: where the hand-written CPU paths below (and the
    CPU attention path in attention.py) apply. Under compile inductor fuses the plain forms itself."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _trunc_normal_(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


class Linear(nn.Module):
    """y = x @ W.T with W stored (out_features, in_features), no bias."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the initial weight (also how a model built on the meta device gets its values)."""
        # std sqrt(2 / (fan_in + fan_out)) keeps activation variance roughly constant through depth.
        _trunc_normal_(self.weight, math.sqrt(2.0 / (self.in_features + self.out_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(nn.Module):
    """Row lookup: weight[token_ids], weight of shape (num_embeddings, embedding_dim).

    fused=True looks up with F.embedding, whose backward is a dedicated scatter-add kernel; plain
    indexing's backward goes through the general index_put path, measurably slower on CPU.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, fused: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.fused = num_embeddings, embedding_dim, fused
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _trunc_normal_(self.weight, 1.0)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.weight) if self.fused else self.weight[token_ids]

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back to the input dtype.

    The mean of squares over d_model values overflows/loses precision in fp16/bf16, hence the upcast.
    fused=True computes the same expression with torch.nn.functional.rms_norm (still in float32), or,
    in eager mode on a CPU, with _CpuRMSNorm below.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, fused: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.eps, self.fused = eps, fused
        self.weight = nn.Parameter(torch.empty(d_model, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        if self.fused and eager_on_cpu(x):
            return _CpuRMSNorm.apply(x, self.weight, self.eps)
        x32 = x.float()
        if self.fused:
            return F.rms_norm(x32, self.weight.shape, self.weight.float(), self.eps).to(in_dtype)
        rms_inv = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * rms_inv * self.weight.float()).to(in_dtype)


class _CpuRMSNorm(torch.autograd.Function):
    """RMSNorm with its backward derived by hand, for eager mode on a CPU.

    On a CPU torch's rms_norm is a composite of elementwise ops, and autograd's backward through them
    takes about twice the passes over the activations of the formula below. (CUDA has a fused kernel,
    and inductor fuses either form, so elsewhere F.rms_norm is used.) With r = 1 / sqrt(mean(x^2) + eps)
    per row, n = x * r the normalized input, g the incoming gradient, w the weight and d = d_model:

        grad_weight = sum over rows of g * n           = (g * x)^T @ r
        grad_x      = r * (g w - n * mean(g w n))      = r * g w - x * (r^3 / d) * ((g * x) @ w)

    The right-hand forms never build n: both reductions are matrix-vector products with the one
    product g * x, whose buffer then takes grad_x. Forward + backward, 1 thread, best round (`python
    bench/bench_norm.py`): (1024, 128) rows 326 us, against 821 us through F.rms_norm; torch's fused
    LayerNorm kernel (a different function) takes 183 us.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = _as_float32(x)
        norm = torch.linalg.vector_norm(x32, dim=-1, keepdim=True)
        inv_rms = norm.mul_(norm).mul_(1.0 / x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, inv_rms, weight)
        out = torch.mul(x32, inv_rms).mul_(weight)  # float32: a bf16 weight promotes, as .float() would
        return out if out.dtype == x.dtype else out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN205
        x, inv_rms, weight = ctx.saved_tensors
        d = x.shape[-1]
        x32, grad32, w32 = _as_float32(x), _as_float32(grad_out), _as_float32(weight)
        # g x, one row per token (reshape copies only when the inputs come in a non-row-major layout)
        grad_x_prod = torch.mul(grad32, x32).reshape(-1, d)
        r = inv_rms.reshape(-1)
        grad_weight = torch.mv(grad_x_prod.t(), r)
        x_coef = torch.mv(grad_x_prod, w32).mul_(r).mul_(r).mul_(r).view(inv_rms.shape)  # r^3 (g x) @ w
        # grad_x reuses g x's buffer, still in cache, rather than a new one
        grad_x = torch.mul(grad32, w32, out=grad_x_prod.view(x.shape)).mul_(inv_rms)
        grad_x.addcmul_(x32, x_coef, value=-1.0 / d)
        return grad_x.to(x.dtype), grad_weight.to(weight.dtype), None


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    # t itself when already float32: skips a no-op .float() call, which on small tensors is not free
    return t if t.dtype == torch.float32 else t.float()


class _CpuSwiGLUGate(torch.autograd.Function):
    """silu(a) * b with its backward written out, for float32 in eager mode on a CPU.

    With s = silu(a) and g the incoming gradient: grad_b = g * s and grad_a = silu_backward(g * b, a).
    Autograd through F.silu(a) * b keeps a, s and b and allocates three new tensors in backward; this
    keeps a and b, recomputes s, and works in place: one pass more, two [tokens, d_ff] allocations
    fewer, which on a CPU (fresh memory, not in cache) costs more than the pass. Measured fwd+bwd, 1
    thread, float32: (4,256,1344) 5.9-7.9 -> 5.0-5.2 ms; (8,128,344) on par. In bf16 it is slower
    (4.3 -> 5.5 ms: bf16 elementwise ops convert on every pass), so bf16 keeps the plain form, as do
    CUDA and torch.compile.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return F.silu(a).mul_(b)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN205
        a, b = ctx.saved_tensors
        grad_b = F.silu(a).mul_(grad_out)
        grad_gate = grad_out * b
        grad_a = torch.ops.aten.silu_backward.grad_input(grad_gate, a, grad_input=grad_gate)
        return grad_a, grad_b


class SwiGLU(nn.Module):
    """Gated feed-forward: w2(silu(w1 x) * w3 x). fused=True uses torch's one-pass F.silu (and, in
    float32 eager mode on a CPU, _CpuSwiGLUGate)."""

    def __init__(self, d_model: int, d_ff: int, fused: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.fused = fused
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return self.w2(silu(self.w1(x)) * self.w3(x))
        gate, up = self.w1(x), self.w3(x)
        if gate.dtype == torch.float32 and eager_on_cpu(gate):
            return self.w2(_CpuSwiGLUGate.apply(gate, up))
        return self.w2(F.silu(gate) * up)
